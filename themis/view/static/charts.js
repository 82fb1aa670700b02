// Small SVG charts drawn here rather than by a vendored library: the workbench needs three kinds
// (bars, lines, intervals), each a few dozen lines, and owns every pixel with nothing to update.
(function () {
  "use strict";
  const T = (window.Themis = window.Themis || {});
  const NS = "http://www.w3.org/2000/svg";
  const COLORS = ["var(--c0)", "var(--c1)", "var(--c2)", "var(--c3)", "var(--c4)", "var(--c5)"];

  function el(name, attrs, parent) {
    const node = document.createElementNS(NS, name);
    for (const k in attrs) node.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(node);
    return node;
  }
  function tip(node, text) { el("title", {}, node).textContent = text; return node; }
  function fmt(v) {
    if (v === null || v === undefined) return "n/a";
    const a = Math.abs(v);
    if (a !== 0 && (a < 1e-3 || a >= 1e5)) return v.toExponential(2);
    return String(Math.round(v * 1e4) / 1e4);
  }
  function frame(container, title, width, height, legend) {
    const box = document.createElement("div");
    box.className = "chart";
    if (title) { const t = document.createElement("div"); t.className = "title"; t.textContent = title; box.appendChild(t); }
    const svg = el("svg", { width: width, height: height, viewBox: "0 0 " + width + " " + height, role: "img" }, box);
    if (title) el("title", {}, svg).textContent = title;
    if (legend && legend.length > 1) {
      const l = document.createElement("div");
      l.className = "legend";
      legend.forEach(function (name, i) {
        const s = document.createElement("span");
        const sw = document.createElement("i");
        sw.style.background = COLORS[i % COLORS.length];
        s.append(sw, name);
        l.appendChild(s);
      });
      box.appendChild(l);
    }
    container.appendChild(box);
    return svg;
  }
  function ticks(lo, hi, n) {
    if (hi === lo) return [lo];
    const step = Math.pow(10, Math.floor(Math.log10((hi - lo) / n)));
    const nice = [1, 2, 5, 10].map(function (m) { return m * step; }).find(function (s) { return (hi - lo) / s <= n; });
    const out = [];
    for (let v = Math.ceil(lo / nice) * nice; v <= hi + 1e-12; v += nice) out.push(Math.round(v / nice) * nice);
    return out;
  }

  // Grouped bars: labels on x, one bar per series at each label; stacked when opts.stacked.
  T.bars = function (container, opts) {
    const W = opts.width || 260, H = opts.height || 150, L = 34, B = 22, R = 6, Tp = 8;
    const svg = frame(container, opts.title, W, H, opts.series.map(function (s) { return s.name; }));
    const n = opts.labels.length;
    const totals = opts.labels.map(function (_, i) {
      return opts.stacked ? opts.series.reduce(function (a, s) { return a + (s.values[i] || 0); }, 0)
        : Math.max.apply(null, opts.series.map(function (s) { return s.values[i] || 0; }));
    });
    const top = Math.max(1, Math.max.apply(null, totals));
    const y = function (v) { return H - B - (v / top) * (H - B - Tp); };
    ticks(0, top, 4).forEach(function (v) {
      el("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), stroke: "#eee" }, svg);
      el("text", { x: L - 4, y: y(v) + 3, "text-anchor": "end" }, svg).textContent = fmt(v);
    });
    const slot = (W - L - R) / Math.max(1, n);
    const k = opts.stacked ? 1 : opts.series.length;
    const bw = Math.max(1, (slot * 0.8) / k);
    opts.labels.forEach(function (label, i) {
      let base = 0;
      opts.series.forEach(function (s, j) {
        const v = s.values[i] || 0;
        const x = L + i * slot + slot * 0.1 + (opts.stacked ? 0 : j * bw);
        const y0 = opts.stacked ? y(base + v) : y(v);
        const h = opts.stacked ? y(base) - y(base + v) : H - B - y(v);
        tip(el("rect", { x: x, y: y0, width: bw, height: Math.max(0, h), fill: COLORS[j % COLORS.length] }, svg),
          label + (opts.series.length > 1 ? " · " + s.name : "") + ": " + v);
        base += v;
      });
      if (n <= 12 || i % Math.ceil(n / 8) === 0) {
        el("text", { x: L + i * slot + slot / 2, y: H - B + 13, "text-anchor": "middle" }, svg).textContent = label;
      }
    });
    return svg;
  };

  // Lines: each series a list of [x, y]; a series of one point is drawn as a dot.
  T.lines = function (container, opts) {
    const W = opts.width || 420, H = opts.height || 220, L = 52, B = 24, R = 10, Tp = 8;
    const series = opts.series.filter(function (s) { return s.points.length; });
    const svg = frame(container, opts.title, W, H, series.map(function (s) { return s.name; }));
    const xs = [], ys = [];
    series.forEach(function (s) { s.points.forEach(function (p) { xs.push(p[0]); ys.push(p[1]); }); });
    if (!xs.length) return svg;
    let x0 = Math.min.apply(null, xs), x1 = Math.max.apply(null, xs), y0 = Math.min.apply(null, ys), y1 = Math.max.apply(null, ys);
    if (x0 === x1) { x0 -= 1; x1 += 1; }
    if (y0 === y1) { y0 -= Math.abs(y0) * 0.1 || 1; y1 += Math.abs(y1) * 0.1 || 1; }
    const x = function (v) { return L + ((v - x0) / (x1 - x0)) * (W - L - R); };
    const y = function (v) { return H - B - ((v - y0) / (y1 - y0)) * (H - B - Tp); };
    ticks(y0, y1, 4).forEach(function (v) {
      el("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), stroke: "#eee" }, svg);
      el("text", { x: L - 4, y: y(v) + 3, "text-anchor": "end" }, svg).textContent = fmt(v);
    });
    ticks(x0, x1, 6).forEach(function (v) {
      el("text", { x: x(v), y: H - B + 14, "text-anchor": "middle" }, svg).textContent = fmt(v);
    });
    series.forEach(function (s, j) {
      const color = COLORS[opts.series.indexOf(s) % COLORS.length];
      if (s.points.length === 1 || s.dots) {
        s.points.forEach(function (p) { tip(el("circle", { cx: x(p[0]), cy: y(p[1]), r: 3, fill: color }, svg), s.name + " @" + p[0] + ": " + fmt(p[1])); });
        if (s.points.length === 1) return;
      }
      const d = s.points.map(function (p, i) { return (i ? "L" : "M") + x(p[0]).toFixed(1) + " " + y(p[1]).toFixed(1); }).join("");
      tip(el("path", { d: d, fill: "none", stroke: color, "stroke-width": 1.6, "data-series": s.name }, svg), s.name);
    });
    if (opts.xlabel) el("text", { x: W - R, y: H - 2, "text-anchor": "end" }, svg).textContent = opts.xlabel;
    return svg;
  };

  // Intervals: one row per item, a dot at the value and a whisker over [lo, hi]; a dashed mark per
  // item at opts.reference (e.g. chance) when given.
  T.intervals = function (container, opts) {
    const rows = opts.rows;
    const W = opts.width || 520, rowH = 20, L = opts.labelWidth || 200, R = 16, Tp = 6, B = 18;
    const H = Tp + B + rowH * rows.length;
    const svg = frame(container, opts.title, W, H, opts.legend);
    const vals = [];
    rows.forEach(function (r) {
      (r.points || [r]).forEach(function (p) {
        if (p.value !== null && p.value !== undefined) vals.push(p.value);
        if (p.ci) vals.push(p.ci[0], p.ci[1]);
      });
      if (r.reference !== null && r.reference !== undefined) vals.push(r.reference);
    });
    if (!vals.length) return svg;
    let lo = Math.min.apply(null, vals), hi = Math.max.apply(null, vals);
    if (lo === hi) { lo -= 0.5; hi += 0.5; }
    const pad = (hi - lo) * 0.05; lo -= pad; hi += pad;
    const x = function (v) { return L + ((v - lo) / (hi - lo)) * (W - L - R); };
    ticks(lo, hi, 5).forEach(function (v) {
      el("line", { x1: x(v), x2: x(v), y1: Tp, y2: H - B, stroke: "#eee" }, svg);
      el("text", { x: x(v), y: H - 4, "text-anchor": "middle" }, svg).textContent = fmt(v);
    });
    rows.forEach(function (r, i) {
      const cy = Tp + rowH * i + rowH / 2;
      el("text", { x: L - 6, y: cy + 3, "text-anchor": "end" }, svg).textContent = r.label;
      if (r.reference !== null && r.reference !== undefined) {
        tip(el("line", { x1: x(r.reference), x2: x(r.reference), y1: cy - 7, y2: cy + 7, stroke: "#999", "stroke-dasharray": "2 2" }, svg), "chance: " + fmt(r.reference));
      }
      (r.points || [r]).forEach(function (p, j) {
        const color = COLORS[j % COLORS.length];
        const dy = r.points ? (j - (r.points.length - 1) / 2) * 5 : 0;
        if (p.ci) el("line", { x1: x(p.ci[0]), x2: x(p.ci[1]), y1: cy + dy, y2: cy + dy, stroke: color, "stroke-width": 2 }, svg);
        if (p.value !== null && p.value !== undefined) {
          tip(el("circle", { cx: x(p.value), cy: cy + dy, r: 3.5, fill: color }, svg),
            r.label + (p.name ? " · " + p.name : "") + ": " + fmt(p.value) + (p.ci ? " [" + fmt(p.ci[0]) + ", " + fmt(p.ci[1]) + "]" : ""));
        }
      });
    });
    return svg;
  };

  T.fmt = fmt;
  T.COLORS = COLORS;
})();
