// The live dashboard: polls GET /api/history?since=... and GET /config, keeps a bounded copy of the
// history, and redraws. Every empty or failing state is said in words on the page.
"use strict";

(() => {
  const POLL_MS = 1500;            // issue 9: refresh every 1-2 s
  const MAX_POINTS = 1800;         // as ControllerState's HISTORY_LEN (30 min of 1 s windows)
  const MAX_LOG_ROWS = 200;        // as the controller's DECISION_LOG_LEN
  const MIN_SPAN_S = 60;           // narrowest time axis, so the first seconds are not stretched
  // The app may be mounted under a route prefix: API paths are relative to the page's.
  const BASE = location.pathname.replace(/\/dashboard\/?$/, "");
  // A server started with --token wants "Authorization: Bearer ..." on /config and /api/history.
  // The token comes from the page's fragment (#token=..., never sent to the server) or the form.
  const TOKEN_KEY = "varipipe-token";

  const S = {
    points: [], lastT: 0, started: null, restartedAt: null, config: null, sla: null, pipeline: "",
    window: 1, decisions: new Map(), steps: new Map(), error: "", lastOk: null, polls: 0,
    token: "", needToken: false,
  };
  window.VP_STATE = S;  // for tests and curious operators

  const $ = (id) => document.getElementById(id);
  const fmtS = (s) => (s === null || s === undefined || !isFinite(s) ? "–" : s < 1 ? `${(s * 1000).toFixed(0)} ms` : `${s.toFixed(2)} s`);
  const fmtP = (x) => (x === null || x === undefined || !isFinite(x) ? "–" : `${(100 * x).toFixed(1)} %`);
  const num = (x, d) => (x === null || x === undefined || !isFinite(x) ? "–" : Number(x).toFixed(d));

  function readToken() {
    const m = location.hash.match(/token=([^&]+)/);
    if (m) {
      sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
      history.replaceState(null, "", location.pathname + location.search);
    }
    return sessionStorage.getItem(TOKEN_KEY) || "";
  }

  async function getJSON(path) {
    const headers = S.token ? { Authorization: `Bearer ${S.token}` } : {};
    const r = await fetch(BASE + path, { cache: "no-store", headers });
    S.needToken = r.status === 401;
    if (S.needToken) {
      throw new Error(`${path}: HTTP 401, the server wants a bearer token (it was started with --token); ` +
                      "give it below or open this page as /dashboard#token=YOUR_TOKEN");
    }
    if (!r.ok) throw new Error(`${path}: HTTP ${r.status} ${(await r.text()).slice(0, 200)}`);
    return r.json();
  }

  function ingestHistory(h) {
    if (S.started !== null && h.started !== undefined && h.started !== S.started) {
      // A different controller answers: the server restarted and its history began again.
      S.restartedAt = h.started;
      S.points = [];
      S.lastT = 0;
      S.decisions.clear();
      S.steps.clear();
    }
    S.started = h.started ?? S.started;
    S.pipeline = h.pipeline;
    S.sla = h.sla_s;
    S.window = h.window_s || 1;
    for (const p of h.points || []) {
      if (p.t > S.lastT) { S.points.push(p); S.lastT = p.t; }
    }
    if (S.points.length > MAX_POINTS) S.points.splice(0, S.points.length - MAX_POINTS);
  }

  function ingestConfig(c) {
    S.config = c;
    for (const e of c.decision_log || []) S.decisions.set(`${e.generation}@${e.time}`, e);
    for (const e of (c.adapter && c.adapter.log) || []) S.steps.set(`${e.time_s}`, e);
    for (const m of [S.decisions, S.steps]) {
      while (m.size > MAX_LOG_ROWS) m.delete(m.keys().next().value);
    }
  }

  async function poll() {
    try {
      const [h, c] = await Promise.all([getJSON(`/api/history?since=${S.lastT}`), getJSON("/config")]);
      ingestHistory(h);
      ingestConfig(c);
      S.error = "";
      S.lastOk = Date.now() / 1000;
    } catch (e) {
      S.error = String(e && e.message ? e.message : e);
    }
    S.polls += 1;
    try { render(); } catch (e) { console.error(e); }
    setTimeout(poll, POLL_MS);
  }

  // ----------------------------------------------------------------------- banners

  function adapterBanner(c) {
    if (!c) return null;
    const a = c.adapter || {};
    if (c.policy === "ray") return ["info", "adapter: Ray Serve's own autoscaler scales the stages (policy ray); no varipipe loop"];
    if (!a.enabled && a.error) return ["error", `adapter failed to start: ${a.error}`];
    if (!a.enabled) return ["warn", "adapter off: started without --policy (the configuration stays as deployed)"];
    if (a.last_error) {
      const when = a.last_error_time_s ? ` at ${VP.clockTime(a.last_error_time_s)}` : "";
      return ["error", `adapter failing${when} (${a.consecutive_failures} in a row): ${a.last_error}; serving continues on the last decision`];
    }
    if (a.dry_run) return ["info", `adapter ${a.policy} in dry run: it decides and logs, nothing is applied`];
    return ["ok", `adapter ${a.policy} (predictor ${a.predictor}) every ${a.interval_s} s: ${a.steps} steps, ${a.applies} applied`];
  }

  function banners() {
    const out = [];
    if (S.error) {
      const since = S.lastOk ? `; showing data received up to ${VP.clockTime(S.lastOk)}` : "";
      out.push(["error", `cannot reach the server: ${S.error}; retrying every ${POLL_MS / 1000} s${since}`]);
    }
    if (S.restartedAt) out.push(["warn", `the server restarted at ${VP.clockTime(S.restartedAt)}; history before that is gone`]);
    const ab = adapterBanner(S.config);
    if (ab) out.push(ab);
    const errs = (S.config && S.config.replica_errors) || [];
    if (errs.length) out.push(["error", `replica errors: ${errs.join("; ")}`]);
    if (S.config && S.config.decision && !S.config.decision.feasible) {
      out.push(["warn", `current decision is ${S.config.decision.status}: ${S.config.decision.reason}`]);
    }
    const box = $("banners");
    box.textContent = "";
    for (const [kind, msg] of out) {
      const div = document.createElement("div");
      div.className = `banner ${kind}`;
      div.textContent = msg;
      box.appendChild(div);
    }
  }

  // ------------------------------------------------------------------------- data

  function visible() {
    const end = S.points.length ? S.points[S.points.length - 1].t : Date.now() / 1000;
    // "all kept" (0): from the first point kept, but at least MIN_SPAN_S wide.
    const span = Number($("span").value) || Math.max(MIN_SPAN_S, S.points.length ? end - S.points[0].t : 0);
    return { pts: S.points.filter((p) => p.t >= end - span), xMin: end - span, xMax: end };
  }

  function attainment(pts, windowS) {
    // Sliding sums of within_sla and completed over the last windowS seconds, at every point.
    const out = [];
    let j = 0, within = 0, done = 0;
    for (let i = 0; i < pts.length; i++) {
      within += pts[i].within_sla; done += pts[i].completed;
      while (pts[j].t <= pts[i].t - windowS) { within -= pts[j].within_sla; done -= pts[j].completed; j++; }
      out.push([pts[i].t, done > 0 ? within / done : null]);
    }
    return out;
  }

  function waitingText() {
    if (S.error && !S.points.length) return "cannot reach the server";
    if (!S.points.length) return `waiting for the first metrics window (one every ${S.window} s)`;
    return null;
  }

  function noRequests() {
    return !S.points.some((p) => p.arrival_rps > 0 || p.completed > 0 || p.errors > 0 || p.drops > 0 || p.rejected > 0);
  }

  function emptyText(fallback) {
    const w = waitingText();
    if (w) return w;
    if (noRequests()) return `no requests yet: POST an image to /${S.pipeline}`;
    return fallback;
  }

  // ----------------------------------------------------------------------- render

  function cards(pts) {
    const last = S.points.slice(-5);
    const rate = last.length ? last.reduce((a, p) => a + p.arrival_rps, 0) / last.length : null;
    const att = attainment(S.points, Number($("att").value));
    const attNow = att.length ? att[att.length - 1][1] : null;
    const recent = pts.filter((p) => p.completed > 0);
    const p99 = recent.length ? recent[recent.length - 1].e2e_p99_s : null;
    const d = S.config && S.config.decision;
    const drops = pts.reduce((a, p) => a + p.drops, 0), errors = pts.reduce((a, p) => a + p.errors, 0);
    // Rejected: answered at once by the ingress's admission control (no time to finish). Points from a
    // server before issue 16 have no such field.
    const rejected = pts.reduce((a, p) => a + (p.rejected || 0), 0);
    const items = [
      ["request rate (5 s)", rate === null ? "–" : `${num(rate, 1)} req/s`],
      ["p99 latency / SLA", `${fmtS(p99)} / ${fmtS(S.sla)}`],
      [`SLA attainment (${$("att").value} s)`, fmtP(attNow)],
      ["rejected / dropped / errors (shown)", `${rejected} / ${drops} / ${errors}`],
      ["cost (predicted)", d && d.predicted_cost > 0 ? num(d.predicted_cost, 3) : "–"],
      ["end-to-end accuracy", d && d.predicted_accuracy > 0 ? num(d.predicted_accuracy, 3) : "–"],
      ["generation", S.config ? String(S.config.generation) : "–"],
    ];
    const box = $("cards");
    box.textContent = "";
    for (const [k, v] of items) {
      const div = document.createElement("div");
      div.className = "card";
      div.innerHTML = "<span></span><b></b>";
      div.children[0].textContent = k;
      div.children[1].textContent = v;
      box.appendChild(div);
    }
  }

  function charts(v) {
    const common = { xMin: v.xMin, xMax: v.xMax };
    VP.lineChart($("chart-rate"), { ...common, yLabel: "req/s", empty: emptyText("no requests in this window"),
      series: noRequests() ? [] : [
        { name: "observed", pts: v.pts.map((p) => [p.t, p.arrival_rps]) },
        { name: "predicted (adapter forecast)", pts: v.pts.filter((p) => p.predicted_rps !== null).map((p) => [p.t, p.predicted_rps]), step: true, dash: "5 3" },
      ] });
    const done = v.pts.filter((p) => p.completed > 0);
    VP.lineChart($("chart-latency"), { ...common, yFormat: (x) => fmtS(x),
      empty: emptyText("no completed requests in this window"),
      hlines: S.sla ? [{ y: S.sla, label: `SLA ${fmtS(S.sla)}`, color: "#b00" }] : [],
      series: [{ name: "p50", pts: done.map((p) => [p.t, p.e2e_p50_s]) },
               { name: "p99", pts: done.map((p) => [p.t, p.e2e_p99_s]) }] });
    const attWin = Number($("att").value);
    VP.lineChart($("chart-attainment"), { ...common, yMin: 0, yMax: 1.02, yFormat: (x) => `${Math.round(x * 100)}%`,
      yLabel: "within SLA", empty: emptyText("no completed requests in this window"),
      series: [{ name: `answered within SLA / answered, last ${attWin} s`, pts: attainment(S.points, attWin).filter((p) => p[0] > v.xMin) }] });
    // A cost or accuracy of 0 means "not predicted" (the default configuration carries no prediction).
    const unpredicted = waitingText() || "no prediction: the configuration in force was not chosen by a policy";
    VP.lineChart($("chart-cost"), { ...common, height: 120, yLabel: "cost", empty: unpredicted,
      series: [{ name: "cost", pts: v.pts.filter((p) => p.cost > 0).map((p) => [p.t, p.cost]), step: true }] });
    // Its axis fits the accuracies shown (a cheaper variant costs a few per cent of end-to-end accuracy:
    // on a 0-1 axis the drop in a burst would be one pixel); the tick labels give the values.
    const acc = v.pts.filter((p) => p.accuracy > 0).map((p) => [p.t, p.accuracy]);
    const [accMin, accMax] = VP.fitRange(acc.map((p) => p[1]), 0, 1);
    VP.lineChart($("chart-accuracy"), { ...common, height: 120, yLabel: "accuracy", yMin: accMin, yMax: accMax,
      yFormat: (x) => x.toFixed(3), empty: unpredicted,
      series: [{ name: "accuracy", pts: acc, step: true, color: "#2ca02c" }] });
    const names = v.pts.length ? v.pts[v.pts.length - 1].stages.map((s) => s.stage) : [];
    VP.swimlanes($("chart-config"), { ...common, empty: waitingText() || "no configuration deployed yet",
      lanes: names.map((name) => ({ name, segs: VP.segments(v.pts.flatMap((p) => {
        const s = p.stages.find((x) => x.stage === name);
        return s ? [[p.t, `${s.variant} b${s.batch} ×${s.replicas}`, s.variant]] : [];
      }), v.xMax) })) });
  }

  function summary(d) {
    return d && d.stages ? d.stages.map((s) => `${s.stage}=${s.variant} b${s.batch} x${s.replicas}`).join(", ") : "";
  }

  // Decision log rows: each configuration the controller received, joined with the adapter step
  // that applied it (forecast, time to apply); adapter steps that applied nothing are rows of their own.
  function logRows() {
    const steps = [...S.steps.values()];
    const used = new Set();
    const rows = [...S.decisions.values()].map((e) => {
      const step = steps.filter((s) => s.action === "applied" && summary(s.decision) === e.to && s.time_s <= e.time + 1)
        .sort((a, b) => b.time_s - a.time_s)[0];
      if (step) used.add(step);
      return { time: e.time, action: e.from === "(none)" ? "deployed" : "applied", from: e.from, to: e.to,
               policy: e.policy, status: e.status, why: e.explanation || e.reason,
               binding: e.binding_constraints || (step && step.decision && step.decision.binding_constraints) || [],
               forecast: step ? step.forecast_rps : null, took: step ? step.apply_duration_s : null };
    });
    for (const s of steps) {
      if (used.has(s) || s.action === "unchanged" || s.action === "applied") continue;
      rows.push({ time: s.time_s, action: s.action, from: "", to: summary(s.decision), policy: s.decision ? s.decision.policy : "",
                  status: s.decision ? s.decision.status : "", why: s.note, binding: [], forecast: s.forecast_rps, took: null });
    }
    return rows.sort((a, b) => b.time - a.time);
  }

  function decisionLog() {
    const box = $("decisions");
    const rows = logRows();
    const unchanged = [...S.steps.values()].filter((s) => s.action === "unchanged").length;
    $("log-note").textContent = unchanged ? `(${unchanged} adapter steps kept the configuration; not listed)` : "";
    if (!rows.length) {
      box.innerHTML = '<p class="empty-note"></p>';
      box.firstChild.textContent = waitingText() || "no decisions yet";
      return;
    }
    const table = document.createElement("table");
    table.className = "log";
    table.innerHTML = "<thead><tr><th>time</th><th>what</th><th>old → new configuration</th><th>policy / status</th>" +
      "<th>forecast</th><th>time to apply</th><th>why (binding constraints, runner-up)</th></tr></thead><tbody></tbody>";
    for (const r of rows) {
      const tr = document.createElement("tr");
      tr.className = `row-${r.action}`;
      const cells = [VP.clockTime(r.time), r.action, null, `${r.policy || "–"} / ${r.status || "–"}`,
                     r.forecast === null || r.forecast === undefined ? "–" : `${num(r.forecast, 1)} req/s`,
                     r.took === null || r.took === undefined ? "–" : fmtS(r.took), null];
      for (const c of cells) tr.appendChild(document.createElement("td")).textContent = c ?? "";
      const cfg = tr.children[2];
      if (r.from && r.from !== "(none)") { cfg.appendChild(document.createElement("div")).textContent = r.from; cfg.firstChild.className = "old"; }
      cfg.appendChild(document.createElement("div")).textContent = (r.from && r.from !== "(none)" ? "→ " : "") + r.to;
      const why = tr.children[6];
      if (r.binding && r.binding.length) why.appendChild(document.createElement("div")).textContent = `binding: ${r.binding.join(", ")}`;
      const pre = why.appendChild(document.createElement("pre"));
      pre.textContent = r.why || "";
      table.tBodies[0].appendChild(tr);
    }
    box.textContent = "";
    box.appendChild(table);
  }

  // Profile vs observed (GET /config's "calibration"): one row per stage and variant.
  function calibrationTable() {
    const box = $("calibration");
    const cal = S.config && S.config.calibration;
    const say = (text) => { box.innerHTML = '<p class="empty-note"></p>'; box.firstChild.textContent = text; };
    if (!cal) return say(waitingText() || "no calibration figures from the server");
    if (!cal.enabled) return say(`calibration off${cal.error ? `: ${cal.error}` : ""}: the adapter plans on the profile as it is`);
    const rows = (cal.corrections || []).filter((c) => c.samples > 0 || c.factor !== 1);
    if (!rows.length) return say("no batches observed yet: every variant plans on the profile as it is");
    const table = document.createElement("table");
    table.className = "log";
    table.innerHTML = "<thead><tr><th>stage</th><th>variant</th><th>profile p50</th><th>observed p50</th>" +
      "<th>estimate</th><th>correction in force</th><th>from</th><th>batches</th></tr></thead><tbody></tbody>";
    for (const c of rows) {
      const tr = document.createElement("tr");
      const est = c.estimate > 0 ? `×${num(c.estimate, 2)}` : "–";
      const middle = c.factor === 1 ? "none (×1)" : `×${num(c.factor, 2)}${c.clipped ? " (clipped)" : ""}`;
      // Batches spreading wider than profiled: the planned p95 / p99 widen by the tail (adapter/calibration.py).
      const force = c.tail && c.tail !== 1 ? `${middle}; tail ×${num(c.tail, 1)} the profile's` : middle;
      const from = { variant: "its batches", stage: "its stage's batches", none: "–" }[c.source] || c.source;
      const cells = [c.stage, c.variant, c.samples ? fmtS(c.predicted_p50_s) : "–", c.samples ? fmtS(c.observed_p50_s) : "–",
                     est, force, from, String(c.samples)];
      for (const v of cells) tr.appendChild(document.createElement("td")).textContent = v;
      table.tBodies[0].appendChild(tr);
    }
    box.textContent = "";
    box.appendChild(table);
    const plan = cal.planning ? `; the adapter: ${cal.planning}` : "";
    $("calibration-note").textContent = `estimator ${cal.settings.estimator}, half-life ${cal.settings.half_life_s} s, ` +
      `in force from ${cal.settings.min_samples} batches${plan}`;
  }

  function render() {
    $("pipeline").textContent = S.pipeline ? `${S.pipeline} (SLA ${fmtS(S.sla)})` : "";
    const conn = $("conn");
    conn.textContent = S.error ? "disconnected" : S.polls ? `live, updated ${new Date().toTimeString().slice(0, 8)}` : "connecting…";
    conn.className = `pill ${S.error ? "bad" : "good"}`;
    banners();
    $("token-form").hidden = !S.needToken;
    const v = visible();
    cards(v.pts);
    charts(v);
    calibrationTable();
    decisionLog();
  }

  S.token = readToken();
  $("token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    S.token = $("token").value.trim();
    sessionStorage.setItem(TOKEN_KEY, S.token);
  });
  for (const id of ["span", "att"]) $(id).addEventListener("change", () => render());
  window.addEventListener("resize", () => render());
  poll();
})();
