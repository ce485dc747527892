/* The trial page: status with reason, measured numbers, config against the default,
   loss curve and learning-rate trace, NVML telemetry and profiler hotspots when recorded. */
"use strict";
(() => {
  const T = window.tuner;
  const { el, api, fmt, badge } = T;
  const study = document.body.dataset.study;
  const number = Number(document.body.dataset.trial);
  const main = document.getElementById("main");

  const card = (title, body, right = null) => el("section", { class: "card" }, el("div", { class: "card-head" }, el("h2", {}, title), right ? el("div", { class: "right" }, right) : null), body);
  const kpi = (label, value, sub) => el("div", { class: "card kpi" }, el("div", { class: "label" }, label), el("div", { class: "value" }, value), el("div", { class: "sub" }, sub || ""));

  /** Find profiler sections ({hotspots: [...]}) and NVML summaries anywhere in the telemetry dict. */
  function collect(node, path, found) {
    if (!node || typeof node !== "object" || path.length > 4) return found;
    if (Array.isArray(node.hotspots)) found.hotspots.push({ path: path.join(" / ") || "profile", section: node });
    else if (node.metrics && typeof node.metrics === "object" && Object.values(node.metrics).some((m) => m && typeof m === "object" && "mean" in m)) found.nvml.push({ path: path.join(" / ") || "nvml", summary: node });
    if (Array.isArray(node.samples) && node.samples.length && typeof node.samples[0] === "object" && "t" in node.samples[0]) found.samples.push({ path: path.join(" / "), samples: node.samples });
    if (!Array.isArray(node)) for (const [key, value] of Object.entries(node)) if (key !== "samples" && key !== "hotspots") collect(value, [...path, key], found);
    return found;
  }

  const NVML_LABELS = { util_gpu: ["GPU utilisation", "%"], util_mem: ["memory-bus utilisation", "%"], mem_used: ["memory used", "GiB"], power_mw: ["power", "W"], sm_clock: ["SM clock", "MHz"], temp: ["temperature", "°C"], pcie_tx_kbs: ["PCIe TX", "MB/s"], pcie_rx_kbs: ["PCIe RX", "MB/s"] };
  const scaleNvml = (metric, v) => (metric === "mem_used" ? v / 2 ** 30 : metric === "power_mw" ? v / 1000 : metric.startsWith("pcie") ? v / 1000 : v);

  function nvmlCard(entry) {
    const s = entry.summary;
    const rows = Object.entries(s.metrics).map(([metric, m]) => {
      const [label, unit] = NVML_LABELS[metric] || [metric, ""];
      return el("tr", {}, el("td", {}, label), ...["mean", "min", "max"].map((k) => el("td", { class: "num" }, m[k] === undefined ? "–" : `${fmt(scaleNvml(metric, m[k]), 4)} ${unit}`)));
    });
    // Bandwidth as a share of the peaks (probed memory bandwidth, PCIe link), when the sampler knew them.
    const bw = s.bandwidth || {};
    const pct = (v, bound = "") => (v === undefined || v === null ? "–" : `${bound}${(v * 100).toFixed(v < 0.01 ? 3 : 1)}%`);
    // Without GPM the memory figure is an upper bound (NVML's busy share x the theoretical peak): shown as "≤".
    const shareRow = (label, share, bound = "") => (share ? el("tr", {}, el("td", {}, label), el("td", { class: "num" }, pct(share.mean, bound)), el("td", { class: "num" }, "–"), el("td", { class: "num" }, pct(share.max, bound))) : null);
    const upper = bw.memory && bw.memory.method === "nvml_memory_busy_upper_bound" ? "≤ " : "";
    rows.push(...[shareRow("memory bw / probed peak", bw.memory && bw.memory.share_of_probed_peak, upper),
      shareRow("PCIe RX / link peak", bw.pcie && bw.pcie.rx && bw.pcie.rx.share_of_peak),
      shareRow("PCIe TX / link peak", bw.pcie && bw.pcie.tx && bw.pcie.tx.share_of_peak)].filter(Boolean));
    const throttle = s.throttle && s.throttle.reasons && s.throttle.reasons.length
      ? el("div", { class: "banner warn", style: "margin-top:10px" }, `Clock-event reasons seen: ${s.throttle.reasons.map((r) => `${r} (${Math.round((s.throttle.share[r] || 0) * 100)}% of samples)`).join(", ")}`) : null;
    return card("NVML telemetry", el("div", {},
      el("table", { class: "data" }, el("thead", {}, el("tr", {}, ["", "mean", "min", "max"].map((h, i) => el("th", { class: i ? "num" : "" }, h)))), el("tbody", {}, rows)),
      throttle), el("span", { class: "note" }, `${s.samples ?? "?"} samples${s.duration_s ? ` over ${T.duration(s.duration_s)}` : ""}`));
  }

  function hotspotsCard(entry) {
    const section = entry.section;
    const top = section.hotspots.slice(0, 15);
    const max = Math.max(...top.map((h) => h.share || 0), 1e-9);
    return card(`Profiler hotspots (${entry.path})`, el("div", { class: "table-wrap" }, el("table", { class: "data" },
      el("thead", {}, el("tr", {}, ["operator", "category", "calls", "self time", "share"].map((h, i) => el("th", { class: i >= 2 ? "num" : "" }, h)))),
      el("tbody", {}, top.map((h) => el("tr", {},
        el("td", { class: "mono", title: h.name }, h.name.length > 60 ? `${h.name.slice(0, 57)}…` : h.name),
        el("td", {}, h.category), el("td", { class: "num" }, fmt(h.calls)),
        el("td", { class: "num" }, `${fmt(h.self_time_us / 1000, 4)} ms`),
        el("td", { class: "num" }, el("div", { class: "bar-cell" }, el("div", { class: "bar", style: `width:${Math.round(((h.share || 0) / max) * 90)}px` }), `${((h.share || 0) * 100).toFixed(1)}%`))))))));
  }

  /** One cell of the per-rank NVML table: shares as %, bytes as GiB, the rest as numbers with their unit. */
  function rankValue(column, v) {
    if (v === null || v === undefined) return "–";
    if (column.unit.startsWith("share")) return `${(v * 100).toFixed(v < 0.01 ? 3 : 1)}%`;
    if (column.unit === "bytes") return T.gib(v);
    return `${fmt(v, 4)} ${column.unit}`;
  }

  /** NVML on every rank of a multi-rank trial: one row per rank, the worst flagged, a rank without NVML with its reason. */
  function rankCard(table) {
    const head = el("tr", {}, el("th", {}, "rank"), ...table.columns.map((c) => el("th", { class: "num", title: c.unit }, c.label)));
    const rows = table.rows.map((r) => r.available
      ? el("tr", { class: r.worst ? "worst" : "" }, el("td", {}, `${r.rank}${r.worst ? " (worst)" : ""}`), ...table.columns.map((c) => el("td", { class: "num" }, rankValue(c, r.values[c.key]))))
      : el("tr", {}, el("td", {}, String(r.rank)), el("td", { class: "muted", colspan: table.columns.length }, r.reason)));
    const note = table.worst_rank !== null && table.worst_rank !== undefined
      ? `worst: rank ${table.worst_rank} (${table.worst_by}) · ${table.sampled_ranks} of ${table.rows.length} ranks sampled`
      : (table.reason || "no rank was sampled");
    return card("NVML telemetry per rank", el("div", { class: "table-wrap", id: "rank-telemetry" }, el("table", { class: "data" }, el("thead", {}, head), el("tbody", {}, rows))), el("span", { class: "note" }, note));
  }

  /** Kernel launch latency, GPU idle gaps between kernels and CPU dispatch overhead from the stored profile. */
  function launchCard(lo) {
    const items = [];
    const us = (v) => `${fmt(v, 4)} µs`;
    if (lo.gpu_launch) {
      const g = lo.gpu_launch;
      if (g.launch_latency_us) items.push(["kernel launch latency", `mean ${us(g.launch_latency_us.mean)} · p50 ${us(g.launch_latency_us.p50)} · p90 ${us(g.launch_latency_us.p90)} · max ${us(g.launch_latency_us.max)}`]);
      if (g.launch_call_us) items.push(["launch call (CPU)", `mean ${us(g.launch_call_us.mean)}`]);
      items.push(["GPU idle between kernels", `${(g.idle_share * 100).toFixed(1)}% of ${g.steps} step windows (${fmt(g.idle_us / 1000, 4)} of ${fmt(g.step_window_us / 1000, 4)} ms, ${g.gaps} gaps)`]);
      for (const gap of (g.largest_gaps || []).slice(0, 3)) items.push([`gap in step ${gap.step}`, `${us(gap.gap_us)} after ${gap.after.slice(0, 40)} before ${gap.before.slice(0, 40)}`]);
    }
    if (lo.cpu_dispatch) {
      const c = lo.cpu_dispatch;
      items.push(["CPU dispatch overhead", `${(c.dispatch_share * 100).toFixed(1)}% of operator time · ${us(c.dispatch_us_per_op)} per op over ${fmt(c.op_calls)} calls`]);
      if (c.metadata_op_us_per_call !== null && c.metadata_op_us_per_call !== undefined) items.push(["one metadata-only op", us(c.metadata_op_us_per_call)]);
    }
    return card("Launch latency and idle gaps", el("div", { id: "launch-overhead" }, T.kv(items)), el("span", { class: "note" }, lo.gpu_launch ? "from the profiler's trace" : "CPU profile: no kernels, so no launch latency or GPU idle gaps"));
  }

  async function render(t) {
    T.crumbs(["Studies", "/"], [study, T.studyUrl(study)], [`Trial #${t.number}`]);
    const unit = t.result.item_unit || "items";
    const nav = el("div", { class: "actions" },
      el("a", { class: "btn", href: t.neighbours.previous !== null ? T.trialUrl(study, t.neighbours.previous) : null, "aria-disabled": t.neighbours.previous === null }, "‹ Previous"),
      el("a", { class: "btn", href: T.studyUrl(study) }, "Study"),
      el("a", { class: "btn", href: t.neighbours.next !== null ? T.trialUrl(study, t.neighbours.next) : null }, "Next ›"));
    const head = el("div", { class: "page-head" }, el("h1", { id: "trial-title" }, `Trial #${t.number}`), badge(t.status),
      el("div", { class: "meta" }, el("span", {}, `Optuna state ${t.state}`), t.kind !== "trial" ? el("span", {}, t.kind) : null,
        !t.feasible ? el("span", { style: "color:var(--warn)" }, "over the memory limit") : null), nav);
    const banner = t.reason ? el("div", { class: `banner ${t.status === "ok" ? "info" : t.status === "infeasible" || t.status === "pruned" ? "warn" : "bad"}`, id: "trial-reason" }, el("strong", {}, `${t.status}: `), t.reason) : null;

    const peak = t.result.peak_memory_bytes ?? t.result.predicted_peak_bytes;
    // The server's gain (tuner.study.gain): for the best trial the study card's confirmed
    // figure, with the search-time ratio said separately; for another trial its search-time ratio.
    const g = t.gain_report;
    const gainKpi = el("div", { class: "card kpi", id: "kpi-gain" }, el("div", { class: "label" }, "vs default config"),
      el("div", { class: "value" }, T.gainFigure(g)),
      el("div", { class: "sub" }, T.gainDescription(g),
        [g.measured, g.noise, g.search_text].filter(Boolean).map((line) => el("div", { class: "small" }, line))));
    const kpis = el("div", { class: "grid kpis" },
      t.objectives[0] === "throughput"
        ? gainKpi
        : kpi(T.objectiveLabel(t.objectives[0]), t.values ? fmt(t.values[0], 4) : "–", t.objectives.length > 1 && t.values ? t.objectives.slice(1).map((o, i) => `${T.objectiveLabel(o)} ${fmt(t.values[i + 1], 4)}`).join(" · ") : ""),
      kpi("Throughput", t.result.items_per_s ? fmt(t.result.items_per_s, 4) : "–", `${unit}/s${t.result.timed_steps ? ` over ${t.result.timed_steps} timed steps` : ""}`),
      kpi(t.result.peak_memory_bytes ? "Peak memory" : "Predicted peak", peak ? T.gib(peak) : "–", t.memory_limit_bytes ? `limit ${T.gib(t.memory_limit_bytes)}${t.result.memory_kind ? ` · ${t.result.memory_kind}` : ""}` : (t.result.memory_kind || "")),
      kpi("Step time", t.result.step_time_s ? `${fmt(t.result.step_time_s * 1000, 4)} ms` : "–", t.result.mfu ? `MFU ${(t.result.mfu * 100).toFixed(1)}%` : ""),
      kpi("Duration", T.duration(t.duration_s ?? t.result.duration_s), t.datetime_start ? `started ${T.when(t.datetime_start)}` : ""));

    // An ask/tell trial ran in the user's own job, which applied the study's own parameters
    // (any names): those are its config, not the knobs the study never tuned.
    const config = t.mode === "ask_tell" && t.params && Object.keys(t.params).length
      ? T.kv(Object.entries(t.params).sort(([a], [b]) => a.localeCompare(b)))
      : (t.config ? T.kv(Object.entries(t.config), t.baseline_config) : el("div", { class: "empty" }, "No config recorded (the trial has not been assigned one yet)."));
    const resultRows = Object.entries(t.result).filter(([k, v]) => v !== null && v !== "" && !["status", "reason"].includes(k));
    // An ask/tell client may send a measured field (val_loss…) again among its metrics: show it once.
    const measured = new Set(resultRows.map(([k]) => k));
    const metricRows = Object.entries(t.metrics || {}).filter(([k]) => !measured.has(k));
    const metrics = el("div", {}, T.kv([...resultRows, ...metricRows]),
      t.notes.length ? el("ul", { class: "muted small" }, t.notes.map((n) => el("li", {}, n))) : null);

    const lossNode = el("div", { class: "chart short", id: "chart-loss" });
    const lrNode = el("div", { class: "chart short", id: "chart-lr" });
    const found = collect(t.telemetry, [], { hotspots: [], nvml: [], samples: [] });
    // NVML summaries fit half a row; a hotspot table needs the full width for its columns.
    const nvmlCards = found.nvml.map(nvmlCard);
    const hotspotCards = found.hotspots.map(hotspotsCard);
    const samplesNode = found.samples.length ? el("div", { class: "chart", id: "chart-nvml" }) : null;
    const monitorCards = [t.rank_telemetry ? rankCard(t.rank_telemetry) : null, t.launch_overhead ? launchCard(t.launch_overhead) : null].filter(Boolean);

    main.replaceChildren(head, banner || "", kpis,
      el("div", { class: "grid halves" }, card("Config", el("div", { id: "trial-config" }, config), el("span", { class: "note" }, t.baseline_config ? "highlighted: differs from the default" : "")), card("Measured", metrics)),
      el("div", { class: "grid halves" }, card("Loss curve", lossNode), card("Learning rate", lrNode)),
      samplesNode ? el("div", { class: "grid" }, card("NVML samples", samplesNode)) : "",
      nvmlCards.length ? el("div", { class: "grid halves" }, nvmlCards) : "",
      ...hotspotCards.map((c) => el("div", { class: "grid" }, c)),
      ...monitorCards.map((c) => el("div", { class: "grid" }, c)),
      nvmlCards.length || hotspotCards.length || monitorCards.length ? "" : el("div", { class: "card muted small" }, "No NVML telemetry or profiler hotspots were recorded for this trial (they are taken on GPU machines, or with `tuner profile`)."));

    const steps = t.intermediate.step.length ? t.intermediate : { step: t.loss_curve.map((_, i) => i), value: t.loss_curve };
    if (steps.value.length) {
      await T.plot(lossNode, [{ type: "scatter", mode: "lines", x: steps.step, y: steps.value, line: { color: "#2563eb", width: 2 }, name: t.intermediate.step.length ? "reported" : "training loss" }],
        T.plotLayout({ xaxis: { title: { text: "step" }, gridcolor: "#eef2f7" }, yaxis: { title: { text: t.intermediate.step.length ? "intermediate value" : "loss" }, gridcolor: "#eef2f7" }, showlegend: false }));
    } else T.empty(lossNode, "No loss curve recorded (a replayed or never-launched trial has none).");
    if (t.lr_trace.length) {
      await T.plot(lrNode, [{ type: "scatter", mode: "lines", x: t.lr_trace.map((_, i) => i), y: t.lr_trace, line: { color: "#7c3aed", width: 2 } }],
        T.plotLayout({ xaxis: { title: { text: "step" }, gridcolor: "#eef2f7" }, yaxis: { title: { text: "learning rate" }, gridcolor: "#eef2f7", exponentformat: "e" }, showlegend: false }));
    } else T.empty(lrNode, "No learning-rate trace recorded.");
    if (samplesNode) {
      const samples = found.samples[0].samples;
      const t0 = samples[0].t;
      const series = (key, label, scale, axis) => ({ type: "scatter", mode: "lines", name: label, x: samples.map((s) => s.t - t0), y: samples.map((s) => (Array.isArray(s[key]) ? s[key][0] : s[key] ?? null)).map((v) => (v === null ? null : v * scale)), yaxis: axis });
      await T.plot(samplesNode, [series("util", "GPU util %", 1, "y"), series("power_mw", "power W", 1 / 1000, "y2"), series("sm_clock", "SM clock MHz", 1 / 10, "y")],
        T.plotLayout({ xaxis: { title: { text: "seconds" }, gridcolor: "#eef2f7" }, yaxis: { title: { text: "% · MHz/10" }, gridcolor: "#eef2f7" }, yaxis2: { title: { text: "W" }, overlaying: "y", side: "right" } }));
    }
    document.body.dataset.ready = "1";
  }

  async function start() {
    const t = await api(`/api/v1/dashboard/studies/${encodeURIComponent(study)}/trials/${number}`);
    // A serving trial: histograms, accuracy guard and notes (inference.js); it is never
    // running by the time the dashboard reads it (the study writes it once, at the end).
    if (t.inference) return T.inference.trialPage(t, main, study);
    await render(t);
    if (t.state === "RUNNING" || t.state === "WAITING") {
      const stop = T.poll(async () => {
        const next = await api(`/api/v1/dashboard/studies/${encodeURIComponent(study)}/trials/${number}`);
        if (next.state !== t.state) { stop(); await render(next); }
      }, 2000);
    }
  }

  start().catch((error) => {
    T.crumbs(["Studies", "/"], [study, T.studyUrl(study)], [`Trial #${number}`]);
    main.replaceChildren(el("div", { class: "banner bad" }, error.status === 404 ? `Study “${study}” has no trial #${number}.` : `Could not load the trial: ${error.message}`));
  });
})();
