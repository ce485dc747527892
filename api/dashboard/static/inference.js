/* The pages of an inference (serving) study, drawn instead of the training views:
   the study page's QPS vs p99 scatter with the SLO line and the Pareto front, serving
   columns and the best serving config against the default; the trial page's latency and
   batch-size histograms, accuracy guard and notes. study.js and trial.js hand over to
   these when the server says the study is `kind: inference`. */
"use strict";
(() => {
  const T = window.tuner;
  const { el, api, fmt, badge } = T;
  const COLORS = { ok: "#2563eb", over_slo: "#d97706", inaccurate: "#dc2626", failed: "#64748b", pareto: "#16a34a", slo: "#dc2626", baseline: "#0f172a" };
  const LABELS = { ok: "ok", over_slo: "over SLO", inaccurate: "inaccurate", failed: "failed" };
  const MARKERS = { ok: { symbol: "circle", size: 8 }, over_slo: { symbol: "diamond", size: 9 }, inaccurate: { symbol: "x", size: 10 }, failed: { symbol: "square-open", size: 8 } };

  const card = (title, body, { right = null, id = null } = {}) => el("section", { class: "card", id }, el("div", { class: "card-head" }, el("h2", {}, title), right ? el("div", { class: "right" }, right) : null), body);
  const kpi = (label, value, sub, id) => el("div", { class: "card kpi", id }, el("div", { class: "label" }, label), el("div", { class: "value" }, value), el("div", { class: "sub" }, sub || ""));
  const ms = (v) => (v === null || v === undefined ? "–" : `${fmt(v, 3)} ms`);
  const qps = (v) => (v === null || v === undefined ? "–" : `${fmt(v, 4)} QPS`);

  /** "top-1 disagreement 0.02" / "AUC delta +0.001" / "max abs diff 0.018": the guard's one figure. */
  function accuracyText(metric, value) {
    if (value === null || value === undefined) return "–";
    if (metric === "auc_delta") return `AUC ${value >= 0 ? "+" : ""}${value.toFixed(4)}`;
    if (metric === "top1_disagreement") return `top-1 −${(value * 100).toFixed(1)}%`;
    return `max|Δ| ${fmt(value, 3)}`;
  }

  function precisionText(row) {
    return row.int8_backend ? `${row.serving_precision}/${row.int8_backend}` : row.serving_precision;
  }

  /* -- the study page ------------------------------------------------------------------- */
  async function studyPage({ name, base, main, summary }) {
    const nodes = {
      head: el("div", { class: "page-head" }),
      kpis: el("div", { class: "grid kpis" }),
      scatter: el("div", { class: "chart", id: "chart-qps-p99" }),
      scatterNote: el("span", { class: "note" }),
      unplotted: el("div", { class: "muted small", id: "not-load-tested" }),
      best: el("div", { id: "best-config" }),
      tableHead: el("thead"),
      tableBody: el("tbody"),
    };
    const sort = { key: "number", order: "desc" };
    let data = null;
    main.replaceChildren(nodes.head, nodes.kpis,
      el("div", { class: "grid two" },
        card("QPS vs p99 latency", el("div", {}, nodes.scatter, nodes.unplotted), { right: nodes.scatterNote }),
        card("Best serving config", nodes.best, { id: "best-card" })),
      card("Trials", el("div", { class: "table-wrap" }, el("table", { class: "data", id: "trials" }, nodes.tableHead, nodes.tableBody)), { id: "trials-card" }));
    T.empty(nodes.scatter, "Loading…");

    function renderHead(s, d) {
      nodes.head.replaceChildren(el("h1", { id: "study-name" }, s.name), badge(s.state),
        el("div", { class: "meta" }, el("span", {}, `workload ${s.workload}`), el("span", {}, "kind inference"),
          el("span", {}, d.objectives.join(" + ")), el("span", { id: "slo" }, `SLO p99 ≤ ${fmt(d.slo_p99_ms, 4)} ms`)));
      const c = d.counts;
      const best = d.best;
      nodes.kpis.replaceChildren(
        kpi("Trials", `${d.trials.length}${s.progress.target ? ` / ${s.progress.target}` : ""}`,
          `${c.ok || 0} ok · ${c.over_slo || 0} over SLO · ${c.inaccurate || 0} inaccurate · ${(c.refused || 0) + (c.infeasible || 0) + (c.failed || 0)} refused/infeasible/failed`, "kpi-trials"),
        kpi("Best QPS at SLO", best ? fmt(best.qps, 4) : "–",
          best ? el("span", {}, `p99 ${ms(best.p99_ms)} · `, el("a", { href: T.trialUrl(name, best.number) }, `trial #${best.number}`)) : "no accurate config met the SLO yet", "kpi-best"),
        kpi("vs default config", best && best.ratio !== null ? `${best.ratio.toFixed(2)}×` : "–",
          d.baseline.qps !== null ? `default (fp32, batch 1, eager, no window): ${qps(d.baseline.qps)} at p99 ${ms(d.baseline.p99_ms)}`
            : (d.baseline.status ? `default config ${d.baseline.status}: no ratio` : "default config not measured"), "kpi-gain"),
        kpi("Started", T.when(s.started), s.last_finished ? `last trial ${T.when(s.last_finished)}` : "no trial finished yet", "kpi-time"));
    }

    function renderBest(d) {
      const b = d.best;
      if (!b) return nodes.best.replaceChildren(el("div", { class: "empty" }, "No accurate config within the SLO yet: over-SLO and inaccurate trials are never best."));
      const baseline = d.baseline.config || null;
      // the knobs that differ from the default (int8_backend only where int8 ran), and always batch and precision
      const int8 = String(b.config.serving_precision || "").startsWith("int8");
      const rows = Object.entries(b.config).filter(([k, v]) => (k !== "int8_backend" || int8)
        && (!baseline || JSON.stringify(baseline[k]) !== JSON.stringify(v) || k === "max_batch_size" || k === "serving_precision"));
      nodes.best.replaceChildren(
        el("div", { class: "muted small", style: "margin-bottom:6px" }, el("a", { href: T.trialUrl(name, b.number) }, `trial #${b.number}`),
          ` · ${qps(b.qps)} at p99 ${ms(b.p99_ms)}`,
          b.ratio !== null ? el("strong", { id: "best-ratio" }, ` · ${b.ratio.toFixed(2)}× the default config's QPS (${qps(d.baseline.qps)}) at the same SLO`) : ""),
        T.kv(rows, baseline),
        el("div", { class: "muted small", style: "margin-top:6px" }, `highlighted: differs from the default config; accuracy ${Object.entries(b.accuracy).map(([k, v]) => `${k} ${fmt(v, 4)}`).join(", ") || "–"}`),
        b.notes.length ? el("ul", { class: "muted small" }, b.notes.map((n) => el("li", {}, n))) : "",
        el("div", { class: "muted small" }, "Build it: ", el("code", {}, `tuner export ${name} --format torch`)));
    }

    function cell(key, row) {
      const v = row[key];
      if (key === "number") return el("td", { class: "num" }, el("a", { href: T.trialUrl(name, v) }, `#${v}`), row.best ? " ★" : "", row.pareto && !row.best ? " ◆" : "");
      if (key === "status") return el("td", { title: row.reason || "" }, badge(v));
      if (key === "serving_precision") return el("td", {}, precisionText(row));
      if (key === "accuracy_delta") return el("td", { class: "num" }, accuracyText(row.accuracy_metric, v));
      if (key === "p99_ms" && v !== null) return el("td", { class: `num${v > data.slo_p99_ms ? " over" : ""}`, style: v > data.slo_p99_ms ? "color:var(--bad)" : "" }, fmt(v, 4));
      return el("td", { class: typeof v === "number" ? "num" : "" }, fmt(v, 4));
    }

    function renderTable(d) {
      const value = (row) => (sort.key === "serving_precision" ? precisionText(row) : row[sort.key]);
      const rows = [...d.trials].sort((a, b) => {
        const x = value(a), y = value(b);
        if (x === null || x === undefined) return 1; // missing values last in both orders
        if (y === null || y === undefined) return -1;
        const c = x < y ? -1 : x > y ? 1 : 0;
        return sort.order === "asc" ? c : -c;
      });
      nodes.tableHead.replaceChildren(el("tr", {}, d.columns.map((c) => el("th", { class: "sortable", dataset: { key: c.key }, onclick: () => {
        if (sort.key === c.key) sort.order = sort.order === "asc" ? "desc" : "asc"; else { sort.key = c.key; sort.order = "desc"; }
        renderTable(d);
      } }, c.label, sort.key === c.key ? el("span", { class: "arrow" }, sort.order === "asc" ? "▲" : "▼") : null))));
      nodes.tableBody.replaceChildren(...(rows.length ? rows.map((row) => el("tr", { class: `click${row.best ? " best" : ""}`, dataset: { number: row.number, status: row.status },
        onclick: (e) => { if (e.target.tagName !== "A") location.href = T.trialUrl(name, row.number); } }, d.columns.map((c) => cell(c.key, row))))
        : [el("tr", {}, el("td", { colspan: d.columns.length, class: "empty" }, "No serving trial finished yet."))]));
    }

    async function drawScatter(d) {
      const sc = d.scatter;
      const plotted = ["ok", "over_slo", "inaccurate", "failed"].reduce((n, g) => n + sc[g].number.length, 0);
      nodes.scatterNote.textContent = `${plotted} measured trials · SLO ${fmt(d.slo_p99_ms, 4)} ms`;
      nodes.unplotted.replaceChildren(...(sc.unplotted.length ? ["Not load-tested: ", ...sc.unplotted.flatMap((u, i) => [i ? ", " : "",
        el("a", { href: T.trialUrl(name, u.number), title: u.reason || "" }, `#${u.number}`), ` ${LABELS[u.status] || u.status}`])] : []));
      if (!plotted) return T.empty(nodes.scatter, "No measured serving trial yet.");
      const hover = "trial #%{customdata}<br>%{x:.4s} QPS<br>p99 %{y:.3s} ms";
      const traces = ["ok", "over_slo", "inaccurate", "failed"].filter((g) => sc[g].number.length).map((g) => ({
        type: "scatter", mode: "markers", name: `${LABELS[g]} (${sc[g].number.length})`, x: sc[g].qps, y: sc[g].p99_ms, customdata: sc[g].number,
        marker: { color: COLORS[g], opacity: 0.8, ...MARKERS[g] }, hovertemplate: `${hover}<extra>${LABELS[g]}</extra>`,
      }));
      if (sc.pareto.number.length) {
        traces.push({ type: "scatter", mode: "lines", name: `Pareto front (${sc.pareto.number.length})`, x: sc.pareto.qps, y: sc.pareto.p99_ms, customdata: sc.pareto.number,
          line: { color: COLORS.pareto, width: 2 }, hovertemplate: `${hover}<extra>Pareto</extra>` });
      }
      if (d.baseline.qps !== null) {
        traces.push({ type: "scatter", mode: "markers", name: "default config", x: [d.baseline.qps], y: [d.baseline.p99_ms],
          marker: { color: COLORS.baseline, symbol: "star", size: 12 }, hovertemplate: "default config<br>%{x:.4s} QPS<br>p99 %{y:.3s} ms<extra></extra>" });
      }
      await T.plot(nodes.scatter, traces, T.plotLayout({
        xaxis: { title: { text: "QPS at the highest rate held (requests/s)" }, gridcolor: "#eef2f7", rangemode: "tozero" },
        yaxis: { title: { text: "p99 latency (ms)" }, gridcolor: "#eef2f7", rangemode: "tozero" },
        shapes: [{ type: "line", xref: "paper", x0: 0, x1: 1, y0: d.slo_p99_ms, y1: d.slo_p99_ms, line: { color: COLORS.slo, dash: "dash", width: 2 } }],
        annotations: [{ xref: "paper", x: 1, y: d.slo_p99_ms, text: `SLO p99 ${fmt(d.slo_p99_ms, 4)} ms`, showarrow: false, xanchor: "right", yanchor: "bottom", font: { size: 11, color: COLORS.slo } }],
      }));
      nodes.scatter.on?.("plotly_click", (e) => { const n = e.points?.[0]?.customdata; if (n !== undefined) location.href = T.trialUrl(name, n); });
    }

    let revision = -1;
    async function refresh(s) {
      if (s.revision === revision && data) return;
      revision = s.revision;
      data = await api(`${base}/inference`);
      renderHead(s, data);
      renderBest(data);
      renderTable(data);
      document.body.dataset.tableReady = "1";
      await drawScatter(data);
    }

    T.crumbs(["Studies", "/"], [name]);
    await refresh(summary);
    document.body.dataset.chartsReady = "1";
    document.body.dataset.ready = "1";
    T.poll(async () => refresh(await api(base)), 2000);
  }

  /* -- the trial page ------------------------------------------------------------------- */
  async function trialPage(t, main, study) {
    const s = t.inference;
    T.crumbs(["Studies", "/"], [study, T.studyUrl(study)], [`Trial #${t.number}`]);
    const nav = el("div", { class: "actions" },
      el("a", { class: "btn", href: t.neighbours.previous !== null ? T.trialUrl(study, t.neighbours.previous) : null }, "‹ Previous"),
      el("a", { class: "btn", href: T.studyUrl(study) }, "Study"),
      el("a", { class: "btn", href: t.neighbours.next !== null ? T.trialUrl(study, t.neighbours.next) : null }, "Next ›"));
    const head = el("div", { class: "page-head" }, el("h1", { id: "trial-title" }, `Trial #${t.number}`), badge(s.status),
      el("div", { class: "meta" }, el("span", {}, "serving trial"), s.is_best ? el("span", {}, "best config") : null, el("span", {}, `SLO p99 ≤ ${fmt(s.slo_p99_ms, 4)} ms`)), nav);
    const banner = s.reason ? el("div", { class: `banner ${s.status === "ok" ? "info" : "bad"}`, id: "trial-reason" }, el("strong", {}, `${s.status}: `), s.reason) : "";
    const ratio = s.qps !== null && s.baseline_qps ? `${(s.qps / s.baseline_qps).toFixed(2)}× the default config's ${qps(s.baseline_qps)}` : "";
    const kpis = el("div", { class: "grid kpis" },
      kpi("QPS at SLO", s.qps !== null ? fmt(s.qps, 4) : "–", ratio || (s.status === "ok" ? "" : "not sustained within the SLO"), "kpi-qps"),
      kpi("p99 latency", ms(s.p99_ms), `p50 ${ms(s.p50_ms)} · p95 ${ms(s.p95_ms)}${s.p99_at_target_ms !== null ? ` · at target ${ms(s.p99_at_target_ms)}` : ""}`, "kpi-p99"),
      kpi("Peak memory", s.peak_memory_bytes ? T.gib(s.peak_memory_bytes) : "–", s.predicted_peak_bytes ? `predicted ${T.gib(s.predicted_peak_bytes)}` : ""),
      kpi("Accuracy", accuracyText(s.accuracy_metric, s.accuracy_delta), "vs the fp32 eager reference", "kpi-accuracy"),
      kpi("Duration", T.duration(t.duration_s), t.datetime_start ? `started ${T.when(t.datetime_start)}` : ""));
    const latency = el("div", { class: "chart short", id: "chart-latency-histogram" });
    const batches = el("div", { class: "chart short", id: "chart-batch-histogram" });
    const accuracy = el("div", { id: "serving-accuracy" },
      T.kv(Object.entries(s.accuracy)),
      s.linear_weight_bytes ? el("div", { class: "muted small", style: "margin-top:6px" }, `Linear weights: ${fmt(s.linear_weight_bytes / 2 ** 20, 3)} MiB`) : "");
    const notes = el("div", { id: "serving-notes" }, s.notes.length ? el("ul", { class: "small" }, s.notes.map((n) => el("li", {}, n))) : el("div", { class: "empty" }, "No notes."));
    const ramp = s.ramp.length ? el("table", { class: "data", id: "serving-ramp" },
      el("thead", {}, el("tr", {}, ["offered QPS", "achieved QPS", "p50 ms", "p95 ms", "p99 ms", "requests", "mean batch"].map((h) => el("th", { class: "num" }, h)))),
      el("tbody", {}, s.ramp.map((p) => el("tr", {}, [p.offered_qps, p.achieved_qps, p.p50_ms, p.p95_ms, p.p99_ms, p.requests, p.mean_batch].map((v, i) => el("td", { class: "num", style: i === 4 && (v === null || v > s.slo_p99_ms) ? "color:var(--bad)" : "" }, v === null ? "∞" : fmt(v, 4)))))))
      : el("div", { class: "empty" }, "No load test: the config was refused, infeasible or inaccurate before one.");
    main.replaceChildren(head, banner, kpis,
      el("div", { class: "grid halves" },
        card("Latency histogram", latency, { right: el("span", { class: "note" }, "requests per bucket, arrival to response (queueing included)") }),
        card("Batch-size histogram", batches, { right: el("span", { class: "note" }, "batches per size") })),
      el("div", { class: "grid halves" },
        card("Serving config", el("div", { id: "trial-config" }, T.kv(Object.entries(s.config), s.baseline_config)), { right: el("span", { class: "note" }, "highlighted: differs from the default") }),
        card("Accuracy guard and notes", el("div", {}, accuracy, notes))),
      card("Rate ramp", ramp, { right: el("span", { class: "note" }, "the result is the highest step whose p99 held") }));
    const bar = (node, hist, color, title) => (hist.bucket.length
      ? T.plot(node, [{ type: "bar", x: hist.bucket, y: hist.count, marker: { color }, hovertemplate: `%{x}: %{y}<extra></extra>` }],
        T.plotLayout({ xaxis: { title: { text: title }, type: "category", gridcolor: "#eef2f7" }, yaxis: { title: { text: "count" }, gridcolor: "#eef2f7" }, showlegend: false }))
      : T.empty(node, "Not load-tested (no measured step)."));
    await bar(latency, s.latency_histogram, COLORS.ok, "latency (ms, bucket upper edge)");
    await bar(batches, s.batch_histogram, COLORS.pareto, "batch size");
    document.body.dataset.ready = "1";
  }

  T.inference = { studyPage, trialPage };
})();
