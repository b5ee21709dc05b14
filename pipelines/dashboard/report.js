// The offline experiment report: every policy side by side, drawn from window.VP_DATA
// (results.json rows, per-policy series and the runner's PNGs, all embedded by report_html.py).
"use strict";

(() => {
  const D = window.VP_DATA || {};
  const $ = (id) => document.getElementById(id);
  const results = D.results || [];
  const slas = [...new Set(results.map((r) => r.sla))];
  // Columns of the summary table: key, label, format, which way is better.
  const COLUMNS = [
    ["sla_attainment", "SLA attainment", (x) => `${(100 * x).toFixed(2)} %`, "max"],
    ["p99_latency_s", "p99 latency", (x) => `${x.toFixed(3)} s`, "min"],
    ["mean_latency_s", "mean latency", (x) => `${x.toFixed(3)} s`, "min"],
    ["mean_accuracy", "accuracy", (x) => x.toFixed(4), "max"],
    ["mean_cost", "mean cost", (x) => x.toFixed(2), "min"],
    ["dropped", "dropped", (x) => String(x), "min"],
    ["requests", "requests", (x) => String(x), null],
    ["decisions", "reconfigurations", (x) => String(x), null],
  ];

  function banner(kind, msg) {
    const div = document.createElement("div");
    div.className = `banner ${kind}`;
    div.textContent = msg;
    $("banners").appendChild(div);
  }

  function meta() {
    const m = D.meta || {};
    const box = $("meta");
    const rows = [["mode", m.mode], ["created (UTC)", m.created_utc], ["git commit", m.git_commit],
      ["profile", m.profile], ["profile sha256", m.profile_sha256], ["seed", m.seed], ["predictor", m.predictor],
      ["interval", m.interval_s !== undefined ? `${m.interval_s} s` : undefined],
      ["cost mode", m.cost_mode], ["cluster cores", m.cluster_cores], ["requests per run", m.requests],
      ["SLAs", m.slas ? Object.entries(m.slas).map(([k, v]) => `${k} = ${v} s`).join(", ") : undefined],
      ["command", m.command]].filter((r) => r[1] !== undefined && r[1] !== null && r[1] !== "");
    box.innerHTML = '<h2>Experiment</h2><div class="meta"></div>';
    for (const [k, v] of rows) {
      const line = box.lastChild.appendChild(document.createElement("div"));
      line.appendChild(document.createElement("b")).textContent = `${k}: `;
      line.appendChild(document.createElement("code")).textContent = String(v);
    }
  }

  function summary(sla) {
    const rows = results.filter((r) => r.sla === sla);
    const table = document.createElement("table");
    table.className = "summary";
    const head = table.createTHead().insertRow();
    for (const h of ["policy", ...COLUMNS.map((c) => c[1])]) head.appendChild(document.createElement("th")).textContent = h;
    const body = table.createTBody();
    for (const r of rows) {
      const tr = body.insertRow();
      tr.insertCell().textContent = r.policy;
      for (const [key, , fmt, better] of COLUMNS) {
        const td = tr.insertCell();
        const v = r[key];
        td.textContent = v === null || v === undefined ? "n/a" : fmt(v);
        const vals = rows.map((x) => x[key]).filter((x) => x !== null && x !== undefined);
        if (better && vals.length > 1 && v !== null && v === (better === "max" ? Math.max(...vals) : Math.min(...vals))) td.className = "best";
      }
    }
    $("summary").textContent = "";
    $("summary").appendChild(table);
    const unit = rows.length ? rows[0].cost_unit : "";
    $("cost-unit").textContent = unit ? `(${unit})` : "";
  }

  // x in hours from the start; one value per bucket of step_s seconds, drawn at the bucket's middle.
  function xy(s, values, scale) {
    const step = (s.step_s && s.step_s[0]) || 1;
    return (values || []).map((v, i) => [((i + 0.5) * step) / 3600, v === null ? null : v * (scale || 1)]);
  }

  function charts(sla) {
    const runs = results.filter((r) => r.sla === sla).map((r) => [r.policy, ((D.series || {})[sla] || {})[r.policy]]);
    const have = runs.filter(([, s]) => s);
    const hours = (x) => `${+x.toFixed(2)} h`;
    const common = { xFormat: hours, xMin: 0, empty: "no per-second series for this SLA in the results folder" };
    const slaS = (results.find((r) => r.sla === sla) || {}).sla_s;
    const first = have.length ? have[0][1] : null;
    const step = first && first.step_s ? first.step_s[0] : 1;
    const load = first ? [{ name: "arrivals", color: "#000", pts: xy(first, first.arrivals, 1 / step) }] : [];
    VP.lineChart($("chart-load"), { ...common, yLabel: "req/s", series: load.concat(have
      .filter(([, s]) => (s.predicted_rps || []).some((v) => v))
      .map(([p, s]) => ({ name: `predicted (${p})`, color: VP.color(p), pts: xy(s, s.predicted_rps), dash: "4 2" }))) });
    const per = (key, extra) => have.map(([p, s]) => ({ name: p, pts: xy(s, s[key]), ...(extra || {}) }));
    VP.lineChart($("chart-attainment"), { ...common, yLabel: "within SLA", yMax: 1.0, yFormat: (x) => `${Math.round(x * 100)}%`,
      series: per("sla_attainment") });
    VP.lineChart($("chart-p99"), { ...common, yLabel: "seconds", series: per("p99_latency_s"),
      hlines: slaS ? [{ y: slaS, label: `SLA ${slaS} s`, color: "#b00" }] : [] });
    VP.lineChart($("chart-cost"), { ...common, yLabel: "cost", series: per("cost") });
    VP.lineChart($("chart-accuracy"), { ...common, yLabel: "accuracy", series: per("mean_accuracy") });
    VP.lineChart($("chart-replicas"), { ...common, yLabel: "replicas", series: per("replicas"),
      empty: "no replica series (live runs record none)" });
  }

  // One swimlane chart per policy: its configuration changes (series/<sla>/<policy>.timeline.json).
  function timelines(sla) {
    const box = $("timelines");
    box.textContent = "";
    const runs = results.filter((r) => r.sla === sla);
    const kept = (D.timelines || {})[sla] || {};
    if (!runs.some((r) => kept[r.policy])) {
      box.innerHTML = '<p class="empty-note"></p>';
      box.firstChild.textContent = "the results folder has no decision timelines for this SLA (written by the runner next to each series)";
      return;
    }
    for (const r of runs) {
      const rows = kept[r.policy];
      const s = ((D.series || {})[sla] || {})[r.policy];
      const step = s && s.step_s ? s.step_s[0] : 1;
      const end = s ? (s.arrivals.length * step) / 3600 : Math.max(...(rows || [{ t: 0 }]).map((x) => x.t / 3600));
      box.appendChild(document.createElement("h2")).textContent = `${r.policy} (${rows ? rows.length : 0} configurations)`;
      const div = box.appendChild(document.createElement("div"));
      div.id = `timeline-${r.policy}`;
      const names = rows && rows.length ? rows[0].stages.map((x) => x.stage) : [];
      VP.swimlanes(div, { xMin: 0, xMax: end, xFormat: (x) => `${+x.toFixed(2)} h`, empty: "no decision timeline for this policy",
        lanes: names.map((name) => ({ name, segs: VP.segments((rows || []).flatMap((row) => {
          const st = row.stages.find((x) => x.stage === name);
          return st ? [[row.t / 3600, `${st.variant} b${st.batch} ×${st.replicas}`, st.variant]] : [];
        }), end) })) });
    }
  }

  function figures() {
    const box = $("figures");
    const figs = D.figures || [];
    if (!figs.length) {
      box.innerHTML = '<p class="empty-note">the results folder has no PNG figures</p>';
      return;
    }
    for (const f of figs) {
      const div = box.appendChild(document.createElement("div"));
      div.className = "figure";
      div.appendChild(document.createElement("h2")).textContent = f.name;
      const img = div.appendChild(document.createElement("img"));
      img.alt = f.name;
      img.src = f.src;
    }
  }

  for (const n of D.notes || []) banner("warn", n);
  meta();
  figures();
  if (!results.length) {
    banner("error", "results.json lists no runs: nothing to compare");
    $("summary").innerHTML = '<p class="empty-note">no runs</p>';
  }
  const select = $("sla");
  for (const s of slas) {
    const opt = select.appendChild(document.createElement("option"));
    opt.value = s;
    const r = results.find((x) => x.sla === s);
    opt.textContent = `${s} (${r.sla_s} s)`;
  }
  const draw = () => { if (select.value) { summary(select.value); charts(select.value); timelines(select.value); } };
  select.addEventListener("change", draw);
  window.addEventListener("resize", draw);
  draw();
})();
