// Small SVG charts shared by the live dashboard and the offline experiment report.
// No dependencies; every chart is redrawn from scratch (a few thousand points at most).
// A chart with nothing to draw still shows its axes and says why (never a blank box).
"use strict";

const VP = (() => {
  const NS = "http://www.w3.org/2000/svg";
  const PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf",
                   "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22"];
  const M = { left: 62, right: 14, top: 10, bottom: 26 };  // plot margins (px)

  function el(name, attrs, parent) {
    const node = document.createElementNS(NS, name);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (parent) parent.appendChild(node);
    return node;
  }

  function text(parent, x, y, s, attrs) {
    const t = el("text", Object.assign({ x, y }, attrs || {}), parent);
    t.textContent = s;
    return t;
  }

  // "Nice" tick values covering [lo, hi] (about n of them).
  function ticks(lo, hi, n) {
    if (!(hi > lo)) return [lo];
    const raw = (hi - lo) / Math.max(1, n);
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toPrecision(12));
    return out;
  }

  function fmtNum(v) {
    if (v === 0) return "0";
    const a = Math.abs(v);
    if (a >= 1000) return (v / 1000).toFixed(a >= 10000 ? 0 : 1) + "k";
    if (a >= 10) return v.toFixed(0);
    if (a >= 1) return v.toFixed(1).replace(/\.0$/, "");
    return v.toPrecision(2).replace(/0+$/, "").replace(/\.$/, "");
  }

  function clockTime(t) {
    const d = new Date(t * 1000);
    return d.toTimeString().slice(0, 8);
  }

  // Colour for a key (a policy, a variant): stable across redraws.
  const assigned = new Map();
  function color(key) {
    if (!assigned.has(key)) assigned.set(key, PALETTE[assigned.size % PALETTE.length]);
    return assigned.get(key);
  }

  function frame(container, height) {
    container.textContent = "";
    const width = Math.max(240, container.clientWidth || 600);
    const svg = el("svg", { width, height, viewBox: `0 0 ${width} ${height}`, class: "vp-chart" }, container);
    return { svg, width, height, pw: width - M.left - M.right, ph: height - M.top - M.bottom };
  }

  function xAxis(f, xMin, xMax, sx, xFormat) {
    for (const v of ticks(xMin, xMax, Math.max(2, Math.floor(f.pw / 90)))) {
      const x = sx(v);
      el("line", { x1: x, x2: x, y1: M.top, y2: M.top + f.ph, class: "grid" }, f.svg);
      text(f.svg, x, f.height - 8, xFormat(v), { class: "tick", "text-anchor": "middle" });
    }
  }

  function message(f, msg) {
    const t = text(f.svg, M.left + f.pw / 2, M.top + f.ph / 2, msg, { class: "empty", "text-anchor": "middle" });
    f.svg.setAttribute("data-empty", msg);
    return t;
  }

  // opts: {series:[{name, color, pts:[[x,y]], step, dash}], xMin, xMax, yMin, yMax, hlines:[{y,label,color}],
  //        yLabel, height, empty (message when no point), xFormat, yFormat}
  function lineChart(container, opts) {
    const f = frame(container, opts.height || 190);
    const series = (opts.series || []).map((s) => ({ ...s, pts: (s.pts || []).filter((p) => p[1] !== null && isFinite(p[1])) }));
    const all = series.flatMap((s) => s.pts);
    const xFormat = opts.xFormat || clockTime;
    const yFormat = opts.yFormat || fmtNum;
    const xs = all.map((p) => p[0]);
    const xMin = opts.xMin ?? (xs.length ? Math.min(...xs) : 0);
    let xMax = opts.xMax ?? (xs.length ? Math.max(...xs) : 1);
    if (!(xMax > xMin)) xMax = xMin + 1;
    const ys = all.map((p) => p[1]).concat((opts.hlines || []).map((h) => h.y));
    let yMin = opts.yMin ?? (ys.length ? Math.min(0, ...ys) : 0);
    let yMax = opts.yMax ?? (ys.length ? Math.max(...ys) * 1.08 : 1);
    if (!(yMax > yMin)) yMax = yMin + 1;
    f.svg.setAttribute("data-y-min", yMin);
    f.svg.setAttribute("data-y-max", yMax);
    const sx = (x) => M.left + ((x - xMin) / (xMax - xMin)) * f.pw;
    const sy = (y) => M.top + f.ph - ((Math.min(Math.max(y, yMin), yMax) - yMin) / (yMax - yMin)) * f.ph;
    for (const v of ticks(yMin, yMax, 4)) {
      el("line", { x1: M.left, x2: M.left + f.pw, y1: sy(v), y2: sy(v), class: "grid" }, f.svg);
      text(f.svg, M.left - 6, sy(v) + 4, yFormat(v), { class: "tick", "text-anchor": "end" });
    }
    xAxis(f, xMin, xMax, sx, xFormat);
    if (opts.yLabel) {
      text(f.svg, 12, M.top + f.ph / 2, opts.yLabel,
           { class: "axis-label", "text-anchor": "middle", transform: `rotate(-90 12 ${M.top + f.ph / 2})` });
    }
    el("rect", { x: M.left, y: M.top, width: f.pw, height: f.ph, class: "plot-border" }, f.svg);
    for (const h of opts.hlines || []) {
      el("line", { x1: M.left, x2: M.left + f.pw, y1: sy(h.y), y2: sy(h.y), class: "hline",
                   stroke: h.color || "#444" }, f.svg);
      text(f.svg, M.left + f.pw - 4, sy(h.y) - 4, h.label || "", { class: "hline-label", "text-anchor": "end" });
    }
    let drawn = 0;
    for (const s of series) {
      if (!s.pts.length) continue;
      const c = s.color || color(s.name);
      let d = "";
      s.pts.forEach((p, i) => {
        const x = sx(p[0]).toFixed(1), y = sy(p[1]).toFixed(1);
        if (i === 0) d += `M${x},${y}`;
        else d += s.step ? `H${x}V${y}` : `L${x},${y}`;
      });
      if (s.step && opts.xMax !== undefined) d += `H${sx(xMax).toFixed(1)}`;
      el("path", { d, class: "series", stroke: c, "stroke-dasharray": s.dash || "", "data-name": s.name,
                   "data-n": s.pts.length, fill: "none" }, f.svg);
      if (s.pts.length === 1) el("circle", { cx: sx(s.pts[0][0]), cy: sy(s.pts[0][1]), r: 2.5, fill: c }, f.svg);
      drawn += s.pts.length;
    }
    f.svg.setAttribute("data-points", drawn);
    if (!drawn) message(f, opts.empty || "no data");
    legend(container, series.map((s) => ({ name: s.name, color: s.color || color(s.name), dash: s.dash })));
    return f.svg;
  }

  function legend(container, items) {
    if (items.length < 2) return;
    const div = document.createElement("div");
    div.className = "legend";
    for (const it of items) {
      const span = document.createElement("span");
      const sw = document.createElement("i");
      sw.style.borderTopColor = it.color;
      if (it.dash) sw.style.borderTopStyle = "dashed";
      span.appendChild(sw);
      span.appendChild(document.createTextNode(it.name));
      div.appendChild(span);
    }
    container.appendChild(div);
  }

  // Swimlanes: one row per lane; each segment a coloured bar labelled with its configuration.
  // opts: {lanes:[{name, segs:[{x0, x1, label, key}]}], xMin, xMax, empty, xFormat}
  function swimlanes(container, opts) {
    const lanes = opts.lanes || [];
    const laneH = 30;
    const f = frame(container, M.top + M.bottom + Math.max(1, lanes.length) * laneH);
    const xMin = opts.xMin ?? 0;
    const xMax = opts.xMax > xMin ? opts.xMax : xMin + 1;
    const sx = (x) => M.left + ((Math.min(Math.max(x, xMin), xMax) - xMin) / (xMax - xMin)) * f.pw;
    xAxis(f, xMin, xMax, sx, opts.xFormat || clockTime);
    let drawn = 0;
    lanes.forEach((lane, i) => {
      const y = M.top + i * laneH;
      text(f.svg, M.left - 6, y + laneH / 2 + 4, lane.name, { class: "tick lane-name", "text-anchor": "end" });
      for (const s of lane.segs) {
        const x0 = sx(s.x0), x1 = Math.max(sx(s.x1), x0 + 1);
        const g = el("g", { class: "segment", "data-lane": lane.name, "data-label": s.label }, f.svg);
        el("rect", { x: x0, y: y + 3, width: x1 - x0, height: laneH - 6, fill: color(s.key || s.label), rx: 2 }, g);
        el("title", {}, g).textContent = `${lane.name}: ${s.label}`;
        if (x1 - x0 > s.label.length * 6.2) text(g, x0 + 4, y + laneH / 2 + 4, s.label, { class: "seg-label" });
        drawn += 1;
      }
    });
    el("rect", { x: M.left, y: M.top, width: f.pw, height: f.ph, class: "plot-border" }, f.svg);
    f.svg.setAttribute("data-points", drawn);
    if (!drawn) message(f, opts.empty || "no configuration yet");
    return f.svg;
  }

  // A y range fitted to values that move little against their size (end-to-end accuracies a few per
  // cent apart), so that a change fills part of the chart instead of a pixel: the values' span
  // padded by a quarter of it on each side, and by at least FIT_MIN_PAD of the largest value (one
  // value alone still gets a readable band); kept within [lo, hi]. Empty: [lo, hi].
  const FIT_SPAN_PAD = 0.25, FIT_MIN_PAD = 0.02;
  function fitRange(values, lo, hi) {
    if (!values.length) return [lo, hi];
    const vMin = Math.min(...values), vMax = Math.max(...values);
    const pad = Math.max((vMax - vMin) * FIT_SPAN_PAD, Math.abs(vMax) * FIT_MIN_PAD, 1e-9);
    return [Math.max(lo, vMin - pad), Math.min(hi, vMax + pad)];
  }

  // Runs of equal labels in [[x, label, colourKey]] -> segments ending where the next begins (last: at xEnd).
  function segments(rows, xEnd) {
    const out = [];
    for (const [x, label, key] of rows) {
      const last = out[out.length - 1];
      if (last && last.label === label) continue;
      if (last) last.x1 = x;
      out.push({ x0: x, x1: xEnd, label, key: key ?? label });
    }
    if (out.length) out[out.length - 1].x1 = Math.max(xEnd, out[out.length - 1].x0);
    return out;
  }

  return { lineChart, swimlanes, segments, color, fmtNum, clockTime, ticks, fitRange };
})();
