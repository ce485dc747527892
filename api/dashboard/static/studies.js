/* The studies page: every study with its progress and best value, the new-study form,
   stop/resume. Refreshes itself every 2 s while visible. */
"use strict";
(() => {
  const { el, api, fmt, badge } = window.tuner;
  const T = window.tuner;
  const main = document.getElementById("main");
  let tbody;
  let countLabel;

  function progressCell(progress) {
    if (!progress) return el("span", { class: "muted" }, "–");
    const target = progress.target;
    const width = progress.fraction !== null ? Math.round(progress.fraction * 100) : 0;
    return el("div", { class: "progress-cell" },
      el("div", { class: "progress", title: `${progress.done} of ${target ?? "?"} trials done` }, el("span", { style: `width:${width}%` })),
      el("span", { class: "mono", dataset: { role: "progress" } }, `${progress.done}/${target ?? "∞"}`),
      progress.running ? el("span", { class: "muted small" }, `${progress.running} running`) : null);
  }

  function bestCell(study) {
    if (!study.best) return el("span", { class: "muted" }, "–");
    // The gain as the study page's card and `tuner best` state it (server-worded).
    const report = study.gain_report;
    const gain = report && report.figure
      ? el("div", { class: "small", dataset: { role: "gain" } }, T.gainFigure(report), " ", el("span", { class: "muted" }, T.gainDescription(report)))
      : null;
    return el("span", {}, el("a", { href: T.trialUrl(study.name, study.best.number), class: "mono" }, fmt(study.best.value, 4)), gain);
  }

  async function lifecycle(study, action) {
    try {
      await api(`/api/v1/studies/${encodeURIComponent(study.name)}/${action}`, { method: "POST" });
      T.toast(`${action === "stop" ? "Stopping" : "Resuming"} ${study.name}`);
      await refresh();
    } catch (error) {
      T.toast(error.message, "bad");
    }
  }

  function actions(study) {
    const canStop = ["queued", "running", "ask_tell"].includes(study.state);
    const canResume = ["stopped", "failed"].includes(study.state);
    return el("div", { class: "row-actions" },
      canStop ? el("button", { class: "btn small danger", type: "button", onclick: (e) => { e.stopPropagation(); lifecycle(study, "stop"); } }, "Stop") : null,
      canResume ? el("button", { class: "btn small", type: "button", onclick: (e) => { e.stopPropagation(); lifecycle(study, "resume"); } }, "Resume") : null);
  }

  function row(study) {
    const objective = study.objectives && study.objectives.length ? study.objectives.join(" + ") : "–";
    return el("tr", { class: "click", dataset: { study: study.name }, onclick: () => { location.href = T.studyUrl(study.name); } },
      el("td", {}, el("a", { href: T.studyUrl(study.name), onclick: (e) => e.stopPropagation() }, el("strong", {}, study.name)),
        el("div", { class: "muted small" }, objective)),
      el("td", {}, study.workload),
      el("td", {}, badge(study.state), study.reason ? el("div", { class: "muted small", title: study.reason }, study.reason.slice(0, 40)) : null),
      el("td", {}, progressCell(study.progress)),
      el("td", { class: "num" }, bestCell(study)),
      el("td", {}, T.when(study.started || study.created_at)),
      el("td", {}, study.state === "running" ? el("span", { class: "muted" }, "running") : T.when(study.last_finished)),
      el("td", {}, study.hardware || el("span", { class: "muted" }, "–")),
      el("td", {}, actions(study)));
  }

  async function refresh() {
    const page = await api("/api/v1/dashboard/studies?limit=200");
    tbody.replaceChildren(...(page.items.length ? page.items.map(row)
      : [el("tr", {}, el("td", { colspan: 9, class: "empty" }, "No studies yet. Start one with “New study”, or run `tuner tune`."))]));
    countLabel.textContent = `${page.total} ${page.total === 1 ? "study" : "studies"}`;
  }

  /* -- the new-study form ---------------------------------------------------------------- */
  function field(label, input, { wide = false, full = false, name } = {}) {
    return el("div", { class: `field${wide ? " wide" : ""}${full ? " full" : ""}`, dataset: { field: name || "" } },
      el("label", {}, label), input, el("div", { class: "error" }));
  }

  function newStudyForm(workloads, presets) {
    const name = el("input", { name: "name", required: true, placeholder: "e.g. gpt-bs-sweep", pattern: "[A-Za-z0-9][A-Za-z0-9_.\\-]{0,127}" });
    const workload = el("select", { name: "workload" },
      el("option", { value: "" }, "(from the search space)"),
      workloads.map((w) => el("option", { value: w.name }, `${w.name} — ${w.description.slice(0, 60)}`)));
    const tables = (workloads.find((w) => w.name === "replay") || {}).replay_tables || [];
    const table = el("select", { name: "table" }, tables.map((t) => el("option", { value: t }, t)));
    const tableField = field("replay table", table, { name: "workload_params.table" });
    const preset = el("select", { name: "preset" },
      el("option", { value: "" }, "(paste a space below)"),
      presets.map((p) => el("option", { value: p.name }, p.label)));
    const space = el("textarea", { name: "space", spellcheck: "false", placeholder: "params:\n  micro_batch_size: {type: int, low: 1, high: 64, log: true}\n  precision: {type: categorical, choices: [fp32, bf16]}" });
    const trials = el("input", { name: "n_trials", type: "number", min: 1, max: 100000, value: 20 });
    const objectives = el("select", { name: "objectives" },
      el("option", { value: "throughput" }, "throughput (max)"),
      el("option", { value: "val_loss" }, "validation loss (min)"),
      el("option", { value: "throughput,val_loss" }, "throughput + validation loss (Pareto)"));
    const sampler = el("select", { name: "sampler" }, ["tpe", "random", "gp", "cmaes", "nsga2", "grid"].map((s) => el("option", { value: s }, s)));
    const memory = el("input", { name: "memory_limit_gib", type: "number", min: 0, step: "any", placeholder: "none" });
    const errors = el("div", { class: "form-errors" });
    const submit = el("button", { class: "btn primary", type: "submit" }, "Start study");

    const syncTable = () => { tableField.style.display = workload.value === "replay" ? "" : "none"; };
    workload.addEventListener("change", syncTable);
    preset.addEventListener("change", () => {
      const chosen = presets.find((p) => p.name === preset.value);
      if (!chosen) return;
      space.value = chosen.text;
      if (chosen.workload) workload.value = chosen.workload;
      else workload.value = "";
      if (chosen.table) table.value = chosen.table;
      syncTable();
    });
    syncTable();

    const form = el("form", { class: "card", id: "new-study", style: "display:none; margin-bottom:16px" },
      el("div", { class: "card-head" }, el("h2", {}, "New study"),
        el("span", { class: "muted small" }, "runs on the server in the background; needs an API token")),
      el("div", { class: "form-grid" },
        field("name", name, { name: "name" }),
        field("workload", workload, { name: "workload" }),
        tableField,
        field("trials", trials, { name: "n_trials" }),
        field("objective", objectives, { name: "objectives" }),
        field("sampler", sampler, { name: "sampler" }),
        field("memory limit (GiB)", memory, { name: "memory_limit_bytes" }),
        field("search space preset", preset, { wide: true }),
        field("search space (YAML or JSON)", space, { full: true, name: "space" })),
      el("div", { class: "form-actions" }, errors,
        el("button", { class: "btn", type: "button", onclick: () => { form.style.display = "none"; } }, "Cancel"), submit));

    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      form.querySelectorAll(".field").forEach((f) => { f.classList.remove("invalid"); f.querySelector(".error").textContent = ""; });
      errors.textContent = "";
      if (!T.token()) {
        errors.textContent = "Set an API token first (button at the top right).";
        return;
      }
      const body = {
        name: name.value.trim(),
        space: space.value,
        n_trials: Number(trials.value),
        objectives: objectives.value.split(","),
        sampler: sampler.value,
      };
      if (workload.value) body.workload = workload.value;
      if (workload.value === "replay" && table.value) body.workload_params = { table: table.value };
      if (memory.value) body.memory_limit_bytes = Math.round(Number(memory.value) * 2 ** 30);
      submit.disabled = true;
      try {
        await api("/api/v1/studies", { method: "POST", json: body });
        T.toast(`Study ${body.name} created`);
        form.style.display = "none";
        await refresh();
      } catch (error) {
        const unplaced = [];
        for (const problem of error.problems || []) {
          const key = problem.field.split(".")[0];
          const target = form.querySelector(`.field[data-field="${problem.field}"]`) || form.querySelector(`.field[data-field="${key}"]`)
            || (problem.field.startsWith("params") ? form.querySelector('.field[data-field="space"]') : null);
          if (target) {
            target.classList.add("invalid");
            target.querySelector(".error").textContent += `${problem.field}: ${problem.problem}${problem.fix ? ` — ${problem.fix}` : ""} `;
          } else unplaced.push(`${problem.field}: ${problem.problem}`);
        }
        errors.textContent = unplaced.join("; ") || (error.problems.length ? "" : error.message);
      } finally {
        submit.disabled = false;
      }
    });
    return form;
  }

  async function start() {
    T.crumbs(["Studies"]);
    countLabel = el("span", { class: "muted" });
    tbody = el("tbody");
    // Enabled once the form has its workloads and presets.
    const newButton = el("button", { class: "btn primary", type: "button", id: "new-study-button", disabled: true }, "New study");
    const table = el("div", { class: "card" },
      el("div", { class: "table-wrap" },
        el("table", { class: "data", id: "studies" },
          el("thead", {}, el("tr", {},
            ["Study", "Workload", "Status", "Progress", "Best", "Started", "Finished", "Hardware", ""].map((h, i) => el("th", { class: i === 4 ? "num" : "" }, h)))),
          tbody)));
    main.replaceChildren(
      el("div", { class: "page-head" }, el("h1", {}, "Studies"), countLabel, el("div", { class: "actions" }, newButton)),
      table);
    await refresh();
    const [workloads, presets] = await Promise.all([api("/api/v1/workloads").catch(() => []), api("/api/v1/dashboard/presets").catch(() => [])]);
    const form = newStudyForm(workloads, presets);
    table.before(form);
    newButton.addEventListener("click", () => { form.style.display = form.style.display === "none" ? "" : "none"; });
    newButton.disabled = false;
    T.poll(refresh, 2000);
  }

  start().catch((error) => { main.replaceChildren(el("div", { class: "banner bad" }, `Could not load the studies: ${error.message}`)); });
})();
