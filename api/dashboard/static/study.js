/* The study page: header and KPIs, charts, best config with exports, hardware, and the
   server-side paged trial table. Polls a cheap summary every 2 s; everything else is
   fetched again only when the study's revision changed. */
"use strict";
(() => {
  const T = window.tuner;
  const { el, api, fmt, badge } = T;
  const name = document.body.dataset.study;
  const base = `/api/v1/dashboard/studies/${encodeURIComponent(name)}`;
  const main = document.getElementById("main");
  const COLORS = { ok: "#2563eb", best: "#16a34a", over_limit: "#d97706", oom: "#dc2626", infeasible: "#7c3aed", pareto: "#16a34a", limit: "#dc2626" };

  const state = {
    summary: null,
    revision: -1,
    table: { offset: 0, limit: 25, sort: "number", order: "desc", statuses: new Set(), q: "" },
    curveTrials: [],
    evaluator: "ped_anova",
    exportFormat: "yaml",
  };
  const nodes = {};

  /* -- layout ---------------------------------------------------------------------------- */
  function card(title, body, { right = null, id = null } = {}) {
    return el("section", { class: "card", id }, el("div", { class: "card-head" }, el("h2", {}, title), right ? el("div", { class: "right" }, right) : null), body);
  }

  function layout() {
    nodes.head = el("div", { class: "page-head" });
    nodes.banner = el("div");
    nodes.kpis = el("div", { class: "grid kpis" });
    nodes.history = el("div", { class: "chart", id: "chart-history" });
    nodes.historyNote = el("span", { class: "note" });
    nodes.best = el("div", { id: "best-config" });
    nodes.scatter = el("div", { class: "chart", id: "chart-scatter" });
    nodes.scatterNote = el("span", { class: "note" });
    nodes.importance = el("div", { class: "chart", id: "chart-importance" });
    nodes.importanceNote = el("span", { class: "note" });
    nodes.parallel = el("div", { class: "chart tall", id: "chart-parallel" });
    nodes.parallelNote = el("span", { class: "note" });
    nodes.curves = el("div", { class: "chart", id: "chart-curves" });
    nodes.curvesNote = el("span", { class: "note" });
    nodes.hardware = el("div", { id: "hardware" });
    nodes.scaling = el("div", { id: "scaling" });
    nodes.scalingCard = card("Scaling efficiency", nodes.scaling, { id: "scaling-card" });
    nodes.scalingCard.hidden = true;
    nodes.tableBody = el("tbody");
    nodes.tableHead = el("thead");
    nodes.pager = el("div", { class: "pager" });
    nodes.filter = el("input", { type: "search", id: "trial-filter", placeholder: "filter: precision=bf16, micro_batch_size>=64", spellcheck: "false" });
    nodes.filterError = el("span", { class: "small", style: "color:var(--bad)" });
    nodes.chips = el("div", { class: "chips" });

    const evaluator = el("div", { class: "seg" },
      [["ped_anova", "PED-ANOVA"], ["fanova", "fANOVA"]].map(([key, label]) =>
        el("button", { type: "button", class: key === state.evaluator ? "on" : "", onclick: (e) => {
          state.evaluator = key;
          e.target.parentNode.querySelectorAll("button").forEach((b) => b.classList.toggle("on", b === e.target));
          loadImportance();
        } }, label)));

    let filterTimer = null;
    nodes.filter.addEventListener("input", () => {
      clearTimeout(filterTimer);
      filterTimer = setTimeout(() => { state.table.q = nodes.filter.value; state.table.offset = 0; loadTable(); }, 250);
    });
    ["ok", "oom", "failed", "pruned", "infeasible", "running"].forEach((status) => {
      nodes.chips.append(el("button", { type: "button", class: "chip", dataset: { status }, onclick: (e) => {
        const chip = e.currentTarget;
        if (state.table.statuses.has(status)) state.table.statuses.delete(status); else state.table.statuses.add(status);
        chip.classList.toggle("on", state.table.statuses.has(status));
        state.table.offset = 0;
        loadTable();
      } }, status));
    });

    main.replaceChildren(
      nodes.head, nodes.banner, nodes.kpis,
      el("div", { class: "grid two" },
        card("Optimization history", nodes.history, { right: nodes.historyNote }),
        card("Best config", nodes.best, { id: "best-card" })),
      el("div", { class: "grid halves" },
        card("Throughput vs peak memory", nodes.scatter, { right: nodes.scatterNote }),
        card("Parameter importance", nodes.importance, { right: [nodes.importanceNote, evaluator] })),
      el("div", { class: "grid" }, card("Parallel coordinates", nodes.parallel, { right: nodes.parallelNote })),
      el("div", { class: "grid two" },
        card("Learning curves", nodes.curves, { right: nodes.curvesNote }),
        card("Hardware profile", nodes.hardware)),
      nodes.scalingCard,
      card("Trials", el("div", {},
        el("div", { class: "toolbar" }, nodes.chips, nodes.filter, nodes.filterError),
        el("div", { class: "table-wrap" }, el("table", { class: "data", id: "trials" }, nodes.tableHead, nodes.tableBody)),
        nodes.pager), { id: "trials-card" }));
    [nodes.history, nodes.scatter, nodes.importance, nodes.parallel, nodes.curves].forEach((n) => T.empty(n, "Loading…"));
  }

  /* -- header, KPIs, best config, hardware ------------------------------------------------ */
  async function lifecycle(action) {
    try {
      await api(`/api/v1/studies/${encodeURIComponent(name)}/${action}`, { method: "POST" });
      T.toast(action === "stop" ? "Stopping after the trials in flight" : "Resumed");
      await refresh(true);
    } catch (error) {
      T.toast(error.message, "bad");
    }
  }

  function renderHead(s) {
    const unit = T.objectiveUnit(s.objectives[0], s.unit);
    const buttons = [];
    if (["queued", "running", "ask_tell"].includes(s.state)) buttons.push(el("button", { class: "btn danger", type: "button", onclick: () => lifecycle("stop") }, "Stop"));
    if (["stopped", "failed"].includes(s.state)) buttons.push(el("button", { class: "btn", type: "button", onclick: () => lifecycle("resume") }, "Resume"));
    nodes.head.replaceChildren(
      el("h1", { id: "study-name" }, s.name), badge(s.state),
      el("div", { class: "meta" },
        el("span", {}, `workload ${s.workload}`),
        el("span", {}, `${s.objectives.map((o, i) => `${T.objectiveLabel(o)} (${s.directions[i] === "maximize" ? "max" : "min"})`).join(" + ")}`),
        s.sampler ? el("span", {}, `sampler ${s.sampler}`) : null,
        s.space_params.length ? el("span", { title: s.space_params.join(", ") }, `${s.space_params.length} ${s.mode === "ask_tell" ? "parameters" : "knobs"}`) : null),
      el("div", { class: "actions" }, buttons));
    nodes.banner.replaceChildren(s.reason ? el("div", { class: `banner ${s.state === "failed" ? "bad" : "warn"}` }, s.reason) : "");

    const p = s.progress;
    const pct = p.fraction !== null ? Math.round(p.fraction * 100) : null;
    const bad = (p.by_status.oom || 0) + (p.by_status.failed || 0);
    const kpi = (label, value, sub, id) => el("div", { class: "card kpi", id }, el("div", { class: "label" }, label), el("div", { class: "value" }, value), el("div", { class: "sub" }, sub));
    const best = s.best ? s.best.values?.[0] : null;
    nodes.kpis.replaceChildren(
      kpi("Trials", el("span", { id: "trial-count" }, `${p.done}${p.target ? ` / ${p.target}` : ""}`),
        el("span", {}, pct !== null ? el("div", { class: "progress", style: "margin:4px 0" }, el("span", { style: `width:${pct}%` })) : null,
          `${p.running} running · ${bad} failed · ${p.by_status.infeasible || 0} infeasible`), "kpi-trials"),
      kpi(`Best ${T.objectiveLabel(s.objectives[0])}`, best !== null && best !== undefined ? fmt(best, 4) : "–",
        s.best ? el("span", {}, unit, " · ", el("a", { href: T.trialUrl(name, s.best.number) }, `trial #${s.best.number}`)) : "no feasible trial yet", "kpi-best"),
      kpi("Gain over default", T.gainFigure(s.gain_report),
        el("span", {}, T.gainDescription(s.gain_report),
          [s.gain_report.measured, s.gain_report.noise].filter(Boolean).map((line) => el("div", { class: "small" }, line))), "kpi-gain"),
      s.pareto ? kpi("Pareto set", `${s.pareto_size} configs`, s.objectives.map(T.objectiveLabel).join(" vs "), "kpi-memory")
        : (!s.measured && s.mode === "ask_tell")
          // nothing measured memory: what an ask/tell study's owner needs instead is when
          // a silent trial of theirs expires (tuner.asktell.expiry)
          ? kpi("Trials expire after", s.trial_timeout_s ? `${fmt(s.trial_timeout_s, 4)} s` : "never", "without a report, heartbeat or tell", "kpi-expiry")
          : kpi("Peak memory (best)", s.best && s.best.peak_memory_gib !== null ? `${s.best.peak_memory_gib.toFixed(1)} GiB` : "–",
            s.memory_limit_bytes ? `limit ${T.gib(s.memory_limit_bytes)}` : (s.hardware?.memory_bytes ? `GPU ${T.gib(s.hardware.memory_bytes)}` : "no memory limit"), "kpi-memory"),
      kpi("Started", T.when(s.started), s.last_finished ? `last trial ${T.when(s.last_finished)}` : "no trial finished yet", "kpi-time"));
  }

  function renderBest(s) {
    const chosen = s.pareto && s.pareto.length ? s.pareto : (s.best ? [s.best] : []);
    if (!chosen.length) {
      nodes.best.replaceChildren(el("div", { class: "empty" }, "No completed trial within the constraints yet."));
      return;
    }
    const top = s.best || chosen[0];
    const baseline = s.baseline.config || null;
    // The tuned knobs (the space's) and any other knob that differs from the default config.
    const differs = (k, v) => !baseline || JSON.stringify(baseline[k]) !== JSON.stringify(v);
    // An ask/tell study's trials run in the user's own job, which applies only the values
    // the study sampled: its own parameters (any names), not the knobs it never tuned.
    const own = s.mode === "ask_tell";
    const shown = own ? Object.entries(top.params || {}).sort(([a], [b]) => a.localeCompare(b))
      : (top.config ? Object.entries(top.config).filter(([k, v]) => s.space_params.includes(k) || differs(k, v)) : []);
    const unchanged = own || !top.config ? [] : Object.entries(top.config).filter(([k, v]) => !s.space_params.includes(k) && !differs(k, v));
    const which = s.pareto ? "pareto" : "best";
    const formats = el("div", { class: "seg" }, ["json", "yaml", "torch"].map((f) =>
      el("button", { type: "button", class: f === state.exportFormat ? "on" : "", onclick: (e) => {
        state.exportFormat = f;
        e.target.parentNode.querySelectorAll("button").forEach((b) => b.classList.toggle("on", b === e.target));
      } }, f)));
    const exportUrl = () => `${base}/export?which=${which}&format=${state.exportFormat}`;
    const fetchText = async () => {
      const headers = T.token() ? { Authorization: `Bearer ${T.token()}` } : {};
      const response = await fetch(exportUrl(), { headers });
      if (!response.ok) throw new Error(`export failed: HTTP ${response.status}`);
      return response.text();
    };
    const ext = { json: "json", yaml: "yaml", torch: "py" };
    // What `tuner tune` writes when the default config won the back-to-back confirmation.
    const keepDefault = s.default_wins
      ? el("div", { class: "banner warn", id: "default-wins", style: "margin-bottom:8px" },
        `The default config was faster back to back (${s.gain_report.text}): no trial beat it, so keep the default config. The best trial is shown for reference.`)
      : "";
    nodes.best.replaceChildren(keepDefault,
      el("div", { class: "muted small", style: "margin-bottom:6px" },
        s.pareto ? `${s.pareto_size} non-dominated configs; showing the best on ${T.objectiveLabel(s.objectives[0])} ` : "",
        el("a", { href: T.trialUrl(name, top.number) }, `trial #${top.number}`),
        top.throughput !== null ? ` · ${fmt(top.throughput, 4)} ${s.unit || "items"}/s` : "",
        top.throughput === null && top.values ? ` · ${s.objectives.map((o, i) => `${T.objectiveLabel(o)} ${fmt(top.values[i], 4)}`).join(" · ")}` : "",
        top.peak_memory_gib !== null ? ` · ${top.peak_memory_gib.toFixed(1)} GiB` : ""),
      T.kv(shown, baseline),
      // "" not null: replaceChildren (unlike el) would print a null child as the text "null"
      unchanged.length ? el("div", { class: "muted small", style: "margin-top:6px" }, `${unchanged.length} other knobs at their default: ${unchanged.map(([k]) => k).join(", ")}`) : "",
      el("div", { class: "toolbar", style: "margin-top:10px" }, formats,
        el("button", { class: "btn small", type: "button", id: "copy-best", onclick: async () => { try { T.copy(await fetchText()); } catch (e) { T.toast(e.message, "bad"); } } }, "Copy"),
        el("button", { class: "btn small", type: "button", id: "download-best", onclick: async () => {
          try { T.download(`${name}-${which}.${ext[state.exportFormat]}`, await fetchText(), "text/plain"); } catch (e) { T.toast(e.message, "bad"); }
        } }, "Download")));
  }

  function renderHardware(s) {
    if (!s.hardware) {
      nodes.hardware.replaceChildren(el("div", { class: "empty" }, "No hardware profile was stored with this study."));
      return;
    }
    nodes.hardware.replaceChildren(T.kv(s.hardware.rows.map((r) => [r.name, r.value])));
  }

  // `tuner scaling`'s report (world size, throughput, speedup over 1, efficiency). Read on
  // every poll: a rerun of `tuner scaling` replaces it without a new trial.
  function renderScaling(s) {
    const key = JSON.stringify(s.scaling);
    if (key === state.scalingKey) return;
    state.scalingKey = key;
    nodes.scalingCard.hidden = !s.scaling;
    if (!s.scaling) return;
    const sc = s.scaling;
    const head = el("tr", {}, ["world size", `${sc.item_unit}/s`, "speedup", "efficiency", "nodes"].map((h) => el("th", {}, h)));
    const rows = sc.rows.map((r) => el("tr", { dataset: { worldSize: r.world_size } },
      el("td", { class: "num" }, String(r.world_size)),
      el("td", { class: "num" }, r.items_per_s !== null ? fmt(r.items_per_s, 4) : "–"),
      el("td", { class: "num" }, r.speedup !== null ? `${r.speedup.toFixed(2)}x` : "–"),
      el("td", { class: "num" }, r.efficiency !== null ? `${Math.round(r.efficiency * 100)}%` : "–"),
      el("td", {}, r.status === "ok" ? r.nodes.join(", ") : `${r.status}${r.reason ? `: ${r.reason}` : ""}`)));
    nodes.scaling.replaceChildren(
      el("table", { class: "data", id: "scaling-table" }, el("thead", {}, head), el("tbody", {}, rows)),
      el("div", { class: "muted small", style: "margin-top:6px" },
        `trial ${sc.trial_number !== null ? `#${sc.trial_number}` : "?"} at each world size; speedup over world size 1, efficiency = speedup / world size (tuner scaling)`));
  }

  /* -- the trial table ---------------------------------------------------------------------- */
  function cell(column, value) {
    if (column.key === "status") return el("td", {}, badge(value));
    if (column.key === "number") return el("td", { class: "num" }, el("a", { href: T.trialUrl(name, value) }, `#${value}`));
    const numeric = typeof value === "number";
    return el("td", { class: numeric ? "num" : "" }, fmt(value, 4));
  }

  async function loadTable() {
    const t = state.table;
    const query = new URLSearchParams({ offset: t.offset, limit: t.limit, sort: t.sort, order: t.order, status: [...t.statuses].join(","), q: t.q });
    let page;
    try {
      page = await api(`${base}/trials?${query}`);
      nodes.filterError.textContent = "";
    } catch (error) {
      nodes.filterError.textContent = error.message;
      return;
    }
    const bestNumber = state.summary && state.summary.best ? state.summary.best.number : null;
    nodes.tableHead.replaceChildren(el("tr", {}, page.columns.map((c) =>
      el("th", { class: `sortable${["number", "status"].includes(c.key) || c.key.startsWith("param.") ? "" : " num"}`, dataset: { key: c.key }, onclick: () => {
        if (t.sort === c.key) t.order = t.order === "asc" ? "desc" : "asc"; else { t.sort = c.key; t.order = c.key === "number" ? "asc" : "desc"; }
        t.offset = 0;
        loadTable();
      } }, c.label, t.sort === c.key ? el("span", { class: "arrow" }, t.order === "asc" ? "▲" : "▼") : null))));
    nodes.tableBody.replaceChildren(...(page.rows.length ? page.rows.map((row) =>
      el("tr", { class: `click${row.number === bestNumber ? " best" : ""}`, dataset: { number: row.number }, onclick: (e) => { if (e.target.tagName !== "A") location.href = T.trialUrl(name, row.number); } },
        page.columns.map((c) => cell(c, row[c.key]))))
      : [el("tr", {}, el("td", { colspan: page.columns.length, class: "empty" }, "No trials match."))]));
    const last = Math.min(page.offset + page.limit, page.total);
    nodes.pager.replaceChildren(
      el("span", { id: "table-range" }, page.total ? `${page.offset + 1}–${last} of ${page.total}${page.total !== page.study_total ? ` (filtered from ${page.study_total})` : ""}` : "0 trials"),
      el("button", { class: "btn small", type: "button", id: "page-prev", disabled: page.offset === 0, onclick: () => { t.offset = Math.max(0, t.offset - t.limit); loadTable(); } }, "‹ Previous"),
      el("button", { class: "btn small", type: "button", id: "page-next", disabled: last >= page.total, onclick: () => { t.offset += t.limit; loadTable(); } }, "Next ›"));
    document.body.dataset.tableReady = "1";
  }

  /* -- charts ----------------------------------------------------------------------------- */
  function shownNote(node, part) {
    node.textContent = part.shown < part.total ? `${part.shown} of ${part.total} shown` : `${part.total} trials`;
  }

  async function drawHistory(data) {
    const h = data.history;
    const s = state.summary;
    shownNote(nodes.historyNote, h);
    if (!h.total) return T.empty(nodes.history, "No completed trials yet.");
    const unit = T.objectiveUnit(data.objectives[0], data.scatter.unit);
    const traces = [
      { type: "scatter", mode: "markers", name: "trial", x: h.number, y: h.value, marker: { color: COLORS.ok, size: 5, opacity: 0.55 }, hovertemplate: "trial #%{x}<br>%{y:.4s}<extra></extra>" },
      { type: "scatter", mode: "lines", name: "best so far", x: h.best_steps.number.concat(h.number.length ? [h.number[h.number.length - 1]] : []),
        y: h.best_steps.value.concat(h.best.length ? [h.best[h.best.length - 1]] : []), line: { color: COLORS.best, width: 2.5, shape: "hv" }, hoverinfo: "skip" },
    ];
    const shapes = [];
    if (s && s.baseline.value !== null) {
      shapes.push({ type: "line", xref: "paper", x0: 0, x1: 1, y0: s.baseline.value, y1: s.baseline.value, line: { color: "#94a3b8", dash: "dot", width: 1.5 } });
    }
    await T.plot(nodes.history, traces, T.plotLayout({
      xaxis: { title: { text: "trial" }, gridcolor: "#eef2f7" }, yaxis: { title: { text: unit }, gridcolor: "#eef2f7" }, shapes,
      annotations: shapes.length ? [{ xref: "paper", x: 1, y: s.baseline.value, text: "default config", showarrow: false, yanchor: "bottom", xanchor: "right", font: { size: 11, color: "#64748b" } }] : [],
    }));
    nodes.history.on?.("plotly_click", (e) => { if (e.points?.[0]) location.href = T.trialUrl(name, e.points[0].x); });
  }

  async function drawScatter(data) {
    const sc = data.scatter;
    const counted = sc.ok.total + sc.over_limit.total + sc.oom.total + sc.infeasible.total;
    nodes.scatterNote.textContent = `${sc.oom.total} OOM · ${sc.infeasible.total} infeasible · ${sc.over_limit.total} over limit`;
    // Trials finished but none measured both throughput and memory (an ask/tell study telling
    // its own objectives, or throughput alone): the card has nothing to say, so it goes
    // rather than stay empty.
    nodes.scatter.closest(".card").hidden = !counted && !!state.summary && state.summary.progress.done > 0;
    if (!counted) return T.empty(nodes.scatter, "No measured trials yet.");
    const tp = `${sc.unit}/s`;
    const group = (key, label, marker) => ({
      type: "scatter", mode: "markers", name: `${label} (${sc[key].total})`, x: sc[key].memory_gib, y: sc[key].throughput, customdata: sc[key].number,
      marker, hovertemplate: `trial #%{customdata}<br>%{x:.1f} GiB<br>%{y:.4s} ${tp}<extra>${label}</extra>`,
    });
    const traces = [
      group("ok", "ok", { color: COLORS.ok, size: 6, opacity: 0.5 }),
      group("over_limit", "over limit", { color: COLORS.over_limit, size: 7, symbol: "diamond", opacity: 0.7 }),
      group("oom", "OOM", { color: COLORS.oom, size: 9, symbol: "x" }),
      group("infeasible", "infeasible (predicted)", { color: COLORS.infeasible, size: 8, symbol: "triangle-down-open" }),
      { type: "scatter", mode: "lines+markers", name: "Pareto front", x: sc.pareto.memory_gib, y: sc.pareto.throughput, customdata: sc.pareto.number,
        line: { color: COLORS.pareto, width: 2, shape: "hv" }, marker: { color: COLORS.pareto, size: 8 }, hovertemplate: `trial #%{customdata}<br>%{x:.1f} GiB<br>%{y:.4s} ${tp}<extra>Pareto</extra>` },
    ].filter((t) => t.x.length);
    const shapes = [];
    const annotations = [];
    if (sc.memory_limit_gib) {
      shapes.push({ type: "line", yref: "paper", y0: 0, y1: 1, x0: sc.memory_limit_gib, x1: sc.memory_limit_gib, line: { color: COLORS.limit, dash: "dash", width: 2 } });
      annotations.push({ yref: "paper", y: 1, x: sc.memory_limit_gib, text: `${sc.limit_source} ${sc.memory_limit_gib.toFixed(0)} GiB`, showarrow: false, xanchor: "right", yanchor: "top", font: { size: 11, color: COLORS.limit } });
    }
    await T.plot(nodes.scatter, traces, T.plotLayout({
      xaxis: { title: { text: "peak memory (GiB)" }, gridcolor: "#eef2f7", rangemode: "tozero" },
      yaxis: { title: { text: tp }, gridcolor: "#eef2f7", rangemode: "tozero" }, shapes, annotations,
    }));
    nodes.scatter.on?.("plotly_click", (e) => { const n = e.points?.[0]?.customdata; if (n !== undefined) location.href = T.trialUrl(name, n); });
  }

  async function drawParallel(data) {
    const pc = data.parallel;
    shownNote(nodes.parallelNote, pc);
    if (!pc.total || pc.dimensions.length < 2) return T.empty(nodes.parallel, "Needs completed trials that vary at least one knob.");
    const dims = pc.dimensions.map((d) => {
      const dim = { label: d.label, values: d.values.map((v) => (v === null ? NaN : v)) };
      if (d.tickvals) { dim.tickvals = d.tickvals; dim.ticktext = d.ticktext; }
      return dim;
    });
    await T.plot(nodes.parallel, [{
      type: "parcoords", dimensions: dims,
      line: { color: pc.color, colorscale: "Viridis", reversescale: data.directions[0] === "minimize", showscale: true, colorbar: { thickness: 10, title: { text: T.objectiveLabel(data.objectives[0]), side: "right" } } },
      labelfont: { size: 12 }, tickfont: { size: 11 },
    }], T.plotLayout({ margin: { l: 70, r: 70, t: 36, b: 20 } }));
  }

  async function loadImportance() {
    try {
      const imp = await api(`${base}/importance?evaluator=${state.evaluator}`);
      nodes.importanceNote.textContent = imp.used_trials ? `${imp.used_trials} of ${imp.complete_trials} trials` : "";
      if (!imp.importances.length) return T.empty(nodes.importance, imp.note || "Not enough trials yet.");
      const rows = [...imp.importances].reverse();
      await T.plot(nodes.importance, [{
        type: "bar", orientation: "h", x: rows.map((r) => r.importance), y: rows.map((r) => r.param), marker: { color: COLORS.ok },
        text: rows.map((r) => `${(r.importance * 100).toFixed(0)}%`), textposition: "auto", hovertemplate: "%{y}: %{x:.3f}<extra></extra>",
      }], T.plotLayout({ margin: { l: 170, r: 16, t: 8, b: 36 }, xaxis: { title: { text: `importance for ${imp.objective}` }, range: [0, 1], gridcolor: "#eef2f7" }, yaxis: { automargin: true } }));
    } catch (error) {
      T.empty(nodes.importance, error.message);
    }
  }

  async function loadCurves() {
    const query = state.curveTrials.length ? `?trials=${state.curveTrials.join(",")}` : "";
    const data = await api(`${base}/curves${query}`);
    if (!data.curves.length) {
      nodes.curvesNote.textContent = "";
      return T.empty(nodes.curves, "No intermediate values or loss curves recorded (replayed trials have none).");
    }
    const source = data.curves.some((c) => c.source === "intermediate") ? "intermediate values" : "training loss";
    nodes.curvesNote.textContent = `${data.curves.length} trials · ${source}`;
    await T.plot(nodes.curves, data.curves.map((c) => ({
      type: "scatter", mode: "lines", name: `#${c.number}`, x: c.step, y: c.value, line: { width: 1.5 }, opacity: c.status === "pruned" ? 0.5 : 0.9,
      hovertemplate: `trial #${c.number} step %{x}: %{y:.4g}<extra></extra>`,
    })), T.plotLayout({ xaxis: { title: { text: "step" }, gridcolor: "#eef2f7" }, yaxis: { title: { text: source === "training loss" ? "loss" : T.objectiveLabel(state.summary.objectives[0]) }, gridcolor: "#eef2f7" }, legend: { font: { size: 10 } } }));
  }

  /** Yield to the browser between charts, so the page stays responsive while they draw. */
  const idle = () => new Promise((resolve) => (window.requestIdleCallback ? requestIdleCallback(resolve, { timeout: 200 }) : setTimeout(resolve, 0)));

  async function loadCharts() {
    T.plotly(); // parse plotly while the chart data is on its way
    const data = await api(`${base}/charts`);
    // The history is what the user looks at first; the rest follows in order of position.
    await drawHistory(data);
    if (!performance.getEntriesByName("tuner:first-chart").length) {
      performance.mark("tuner:first-chart");
      document.body.dataset.firstChart = String(Math.round(performance.now()));
    }
    await idle();
    await drawScatter(data);
    await idle();
    await drawParallel(data);
    if (!document.body.dataset.chartsReady) document.body.dataset.chartsDone = String(Math.round(performance.now()));
    document.body.dataset.chartsReady = "1";
  }

  /* -- refresh ---------------------------------------------------------------------------- */
  async function refresh(force = false) {
    const s = await api(base);
    const changed = force || s.revision !== state.revision || !state.summary || s.state !== state.summary.state;
    state.summary = s;
    renderScaling(s);
    if (!changed) return;
    state.revision = s.revision;
    renderHead(s);
    renderBest(s);
    renderHardware(s);
    await loadTable();
    await loadCharts();
    await Promise.all([loadImportance(), loadCurves().catch((e) => T.empty(nodes.curves, e.message))]);
  }

  async function start() {
    T.crumbs(["Studies", "/"], [name]);
    layout();
    const first = api(base);
    const table = loadTable();
    const s = await first;
    // A serving study: its own views (QPS vs p99, serving columns) replace these, inference.js
    if (s.kind === "inference") { await table; return T.inference.studyPage({ name, base, main, summary: s }); }
    state.summary = s;
    state.revision = s.revision;
    renderHead(s);
    renderBest(s);
    renderHardware(s);
    renderScaling(s);
    await table;
    performance.mark("tuner:first-render");
    document.body.dataset.firstRender = String(Math.round(performance.now()));
    await loadCharts();
    await idle();
    await loadImportance();
    await loadCurves().catch((e) => T.empty(nodes.curves, e.message));
    document.body.dataset.ready = "1";
    T.poll(() => refresh(false), 2000);
  }

  start().catch((error) => {
    main.replaceChildren(el("div", { class: "banner bad" }, error.status === 404 ? `No study named “${name}”.` : `Could not load the study: ${error.message}`),
      el("a", { href: "/" }, "← all studies"));
  });
})();
