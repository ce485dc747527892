/* Shared helpers of the dashboard pages: DOM building, API calls with the bearer token,
   number formatting, polling while the tab is visible, and the plotly loader. */
"use strict";

const TOKEN_KEY = "tuner.token";
const T = (window.tuner = {});

/** el("div", {class: "x", onclick: f}, child, "text", ...) */
T.el = function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
};
const el = T.el;

/* The token lives in this tab's sessionStorage (gone when the tab closes), or, when the
   user ticks "keep it in this browser", in localStorage. Every API call sends it. */
T.token = () => sessionStorage.getItem(TOKEN_KEY) || localStorage.getItem(TOKEN_KEY) || "";
T.setToken = function setToken(token, keep) {
  sessionStorage.removeItem(TOKEN_KEY);
  localStorage.removeItem(TOKEN_KEY);
  if (token) (keep ? localStorage : sessionStorage).setItem(TOKEN_KEY, token);
};
/* Set once a call was refused with 401: the page could not load its data, so a new token
   reloads it (with --read-requires-token every read needs one). */
T.refused = false;

T.ApiError = class ApiError extends Error {
  constructor(status, body) {
    const problems = (body && body.problems) || [];
    super(problems.length ? problems.map((p) => `${p.field}: ${p.problem}${p.fix ? ` (${p.fix})` : ""}`).join("; ") : (body && body.detail) || `HTTP ${status}`);
    this.status = status;
    this.problems = problems;
  }
};

/** fetch JSON from the service; the stored token goes along when there is one. */
T.api = async function api(path, options = {}) {
  const headers = Object.assign({ Accept: "application/json" }, options.headers || {});
  const token = T.token();
  if (token) headers.Authorization = `Bearer ${token}`;
  if (options.json !== undefined) {
    headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(options.json);
  }
  const response = await fetch(path, { method: options.method || "GET", headers, body: options.body });
  const type = response.headers.get("content-type") || "";
  const body = type.includes("json") ? await response.json() : await response.text();
  if (!response.ok) {
    if (response.status === 401) {
      T.toast("This needs an API token: set one with the 'API token' button.", "bad");
      if (!T.refused) {
        T.refused = true;
        T.askForToken(typeof body === "object" && body ? body.detail : String(body));
      }
    }
    throw new T.ApiError(response.status, typeof body === "object" ? body : { detail: body });
  }
  return body;
};

T.toast = function toast(message, kind = "") {
  const box = el("div", { class: `toast ${kind}` }, message);
  document.getElementById("toasts").append(box);
  setTimeout(() => box.remove(), kind === "bad" ? 7000 : 3500);
};

/* -- formatting ------------------------------------------------------------------------- */
T.fmt = function fmt(value, digits = 3) {
  if (value === null || value === undefined || value === "") return "–";
  if (typeof value === "boolean") return value ? "on" : "off";
  if (typeof value !== "number") return String(value);
  if (!Number.isFinite(value)) return String(value);
  const abs = Math.abs(value);
  if (abs >= 1e9) return `${(value / 1e9).toFixed(2)}G`;
  if (abs >= 1e6) return `${(value / 1e6).toFixed(2)}M`;
  if (abs >= 1e4) return `${(value / 1e3).toFixed(1)}k`;
  if (Number.isInteger(value)) return String(value);
  if (abs !== 0 && (abs < 1e-3)) return value.toExponential(2);
  return value.toPrecision(digits).replace(/\.?0+$/, "");
};
T.gib = (bytes) => (bytes === null || bytes === undefined ? "–" : `${(bytes / 2 ** 30).toFixed(1)} GiB`);
T.when = function when(iso) {
  if (!iso) return "–";
  const date = new Date(iso.endsWith("Z") || iso.includes("+") ? iso : `${iso}Z`);
  const seconds = (Date.now() - date.getTime()) / 1000;
  if (seconds < 60) return "just now";
  if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.round(seconds / 3600)} h ago`;
  return date.toLocaleDateString(undefined, { year: "numeric", month: "short", day: "numeric" });
};
T.duration = function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 1) return `${(seconds * 1000).toFixed(0)} ms`;
  if (seconds < 120) return `${seconds.toFixed(1)} s`;
  if (seconds < 7200) return `${(seconds / 60).toFixed(1)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
};
// A user objective is stored as "name:max" / "name:min" (tuner.study.objectives); pages
// label it by its name, the direction being shown beside it where it matters.
T.objectiveLabel = (objective) => String(objective).replace(/:(max|min)$/, "");
T.objectiveUnit = (objective, unit) => (objective === "throughput" ? `${unit || "items"}/s` : T.objectiveLabel(objective).replace("_", " "));
/** A gain over the default config: green above 1, red below (the default was faster). */
T.gainClass = (gain) => (gain < 1 ? "gain-down" : "gain-up");
/* The gain as the server words it (`gain_report`, built by tuner.study.gain, the same text
   `tuner tune` and `tuner best` print): its figure ("x1.74") and which measurement it is
   ("median of 3 back-to-back pairs, range 1.21-2.28, not significant"). Never computed here. */
T.gainFigure = (report) => (report && report.figure
  ? el("span", { class: T.gainClass(report.value), dataset: { role: "gain-figure" }, title: report.text }, report.figure)
  : "–");
T.gainDescription = (report) => el("span", { dataset: { role: "gain-description" } }, report ? report.description : "");

T.badge = (text) => el("span", { class: `badge ${text}` }, String(text).replace("_", "/"));
T.studyUrl = (name) => `/studies/${encodeURIComponent(name)}`;
T.trialUrl = (name, number) => `/studies/${encodeURIComponent(name)}/trials/${number}`;

T.crumbs = function crumbs(...parts) {
  const nav = document.getElementById("crumbs");
  nav.replaceChildren();
  parts.forEach(([label, href], i) => {
    if (i) nav.append(el("span", { class: "sep" }, "/"));
    nav.append(href ? el("a", { href }, label) : el("span", {}, label));
  });
};

T.kv = function kv(rows, baseline) {
  return el("table", { class: "kv" },
    rows.map(([key, value]) => {
      const changed = baseline && key in baseline && JSON.stringify(baseline[key]) !== JSON.stringify(value);
      return el("tr", { class: changed ? "changed" : "" },
        el("td", {}, key),
        el("td", { class: "mono" }, T.fmt(value, 4), changed ? el("span", { class: "was" }, `default ${T.fmt(baseline[key], 4)}`) : null));
    }));
};

T.copy = async function copy(text) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    const area = el("textarea", {}, text);
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  T.toast("Copied to the clipboard");
};
T.download = function download(name, text, type) {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const link = el("a", { href: url, download: name });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
};

/* -- live updates: poll while the tab is visible ---------------------------------------- */
T.poll = function poll(fn, intervalMs) {
  const live = document.getElementById("live");
  let timer = null;
  let busy = false;
  async function tick() {
    if (document.hidden || busy) return;
    busy = true;
    try {
      await fn();
      live.classList.add("on");
    } catch (error) {
      live.classList.remove("on");
      console.warn("refresh failed", error);
    } finally {
      busy = false;
    }
  }
  timer = setInterval(tick, intervalMs);
  document.addEventListener("visibilitychange", () => { if (!document.hidden) tick(); });
  return () => clearInterval(timer);
};

/* -- plotly, from the installed Python package (no CDN) --------------------------------- */
/* The URL carries plotly's version, so the browser may keep it (and V8 its compiled code)
   for a year. Pages call T.plotly() only once their data is on screen: parsing 4.6 MB of
   JavaScript must not hold up the first render. The study page preloads the file from its
   <head>, so the download itself starts at once. */
let plotlyPromise = null;
T.plotly = function plotly() {
  if (!plotlyPromise) {
    plotlyPromise = new Promise((resolve, reject) => {
      const script = el("script", { src: document.body.dataset.plotly, async: true });
      script.onload = () => resolve(window.Plotly);
      script.onerror = () => reject(new Error("plotly.min.js did not load"));
      document.head.append(script);
    });
  }
  return plotlyPromise;
};
T.plotLayout = (extra = {}) => Object.assign({
  margin: { l: 56, r: 16, t: 8, b: 42 },
  font: { family: "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", size: 12, color: "#0f172a" },
  paper_bgcolor: "rgba(0,0,0,0)",
  plot_bgcolor: "rgba(0,0,0,0)",
  xaxis: { gridcolor: "#eef2f7", zeroline: false },
  yaxis: { gridcolor: "#eef2f7", zeroline: false },
  legend: { orientation: "h", y: 1.12, x: 0, font: { size: 11 } },
  hovermode: "closest",
}, extra);
T.plotConfig = { displaylogo: false, responsive: true, modeBarButtonsToRemove: ["lasso2d", "select2d", "autoScale2d"] };
/** Plotly.react into a container, replacing an "empty" placeholder if one is there. */
T.plot = async function plot(container, traces, layout) {
  const Plotly = await T.plotly();
  if (container.querySelector(".empty")) container.replaceChildren();
  await Plotly.react(container, traces, layout, T.plotConfig);
  container.dataset.points = String(traces.reduce((n, t) => n + ((t.x || t.dimensions?.[0]?.values || []).length || 0), 0));
};
T.empty = (container, message) => container.replaceChildren(el("div", { class: "empty" }, message));

/* -- the token dialog ------------------------------------------------------------------- */
document.addEventListener("DOMContentLoaded", () => {
  const dialog = document.getElementById("token-dialog");
  const input = document.getElementById("token-input");
  const button = document.getElementById("token-button");
  const keep = document.getElementById("token-keep");
  const why = document.getElementById("token-why");
  const label = () => { button.textContent = T.token() ? "API token ✓" : "API token"; };
  label();
  const open = (reason) => {
    input.value = T.token();
    keep.checked = Boolean(localStorage.getItem(TOKEN_KEY));
    why.textContent = reason || "";
    why.hidden = !reason;
    if (!dialog.open) dialog.showModal();
  };
  T.askForToken = (detail) => open(`The server refused this page's data: ${detail || "it needs a token"}. Enter a token with scope read.`);
  button.addEventListener("click", () => open(""));
  dialog.addEventListener("close", () => {
    const changed = dialog.returnValue === "clear" || (dialog.returnValue === "save" && input.value.trim());
    if (dialog.returnValue === "save" && input.value.trim()) T.setToken(input.value.trim(), keep.checked);
    if (dialog.returnValue === "clear") T.setToken("", false);
    label();
    if (changed && T.refused) location.reload();  // the page's data failed to load: load it again, with the token
  });
});
