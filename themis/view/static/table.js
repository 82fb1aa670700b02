// A paged, filterable table of one of the run's tables (judgments, rejects, records, items), and
// the drawer that shows one row's whole record. Only one page of rows is ever in the DOM.
(function () {
  "use strict";
  const T = (window.Themis = window.Themis || {});

  function h(tag, attrs, children) {
    const node = document.createElement(tag);
    for (const k in attrs || {}) {
      if (k === "text") node.textContent = attrs[k];
      else if (k === "cls") node.className = attrs[k];
      else node.setAttribute(k, attrs[k]);
    }
    (children || []).forEach(function (c) { if (c !== null && c !== undefined) node.append(c); });
    return node;
  }
  T.h = h;

  T.table = function (container, id, opts) {
    opts = opts || {};
    const box = h("div", { cls: "table-widget", "data-table": id, "data-state": "loading" });
    container.appendChild(box);
    const state = { filters: Object.assign({}, opts.filters || {}), offset: 0, seq: 0, meta: null };
    const widget = { box: box, setFilter: setFilter, ready: null };

    function setFilter(key, value) {
      state.filters[key] = value;
      state.offset = 0;
      const select = box.querySelector('select[data-filter="' + key + '"]');
      if (select) select.value = value;
      return load();
    }

    async function load() {
      const seq = ++state.seq;
      box.dataset.state = "loading";
      let page;
      try {
        page = await T.data.tablePage(id, state.filters, state.offset, state.meta.page);
      } catch (e) {
        if (seq === state.seq) { box.dataset.state = "error"; body.replaceChildren(errorRow(e)); }
        return;
      }
      if (seq !== state.seq) return; // a newer request superseded this one
      body.replaceChildren.apply(body, page.rows.map(row));
      const end = Math.min(page.total, page.offset + page.rows.length);
      total.textContent = page.total ? "rows " + (page.offset + 1) + "–" + end + " of " + page.total : "no rows match";
      box.dataset.total = page.total;
      prev.disabled = page.offset === 0;
      next.disabled = end >= page.total;
      box.dataset.state = "ready";
    }

    function errorRow(e) {
      return h("tr", {}, [h("td", { colspan: state.meta.columns.length, cls: "error", text: String(e.message || e) })]);
    }

    function row(r) {
      const tr = h("tr", { cls: "row", "data-row": r._row }, state.meta.columns.map(function (c) {
        const v = r[c.key];
        return h("td", { text: v === null || v === undefined ? "" : String(v) });
      }));
      tr.addEventListener("click", function () { T.openRow(id, r._row, state.meta.title); });
      return tr;
    }

    const total = h("span", { cls: "total muted" });
    const prev = h("button", { type: "button", text: "‹ previous" });
    const next = h("button", { type: "button", text: "next ›" });
    const body = h("tbody");
    prev.addEventListener("click", function () { state.offset = Math.max(0, state.offset - state.meta.page); load(); });
    next.addEventListener("click", function () { state.offset += state.meta.page; load(); });

    widget.ready = T.data.tableMeta(id).then(function (meta) {
      state.meta = meta;
      box.append(h("h3", { text: opts.title || meta.title }));
      if (meta.note) box.append(h("div", { cls: "muted", text: meta.note }));
      const filters = h("div", { cls: "filters" });
      meta.filters.forEach(function (f) {
        const select = h("select", { "data-filter": f.key }, [h("option", { value: "", text: "all (" + meta.total + ")" })]);
        f.values.forEach(function (v) { select.append(h("option", { value: v.value, text: v.value + " (" + v.count + ")" })); });
        select.value = state.filters[f.key] || "";
        select.addEventListener("change", function () { setFilter(f.key, select.value); });
        filters.append(h("label", {}, [f.label, select]));
      });
      box.append(filters, h("div", { cls: "pager" }, [prev, next, total]));
      const head = h("tr", {}, meta.columns.map(function (c) { return h("th", { text: c.label }); }));
      box.append(h("table", { cls: "grid rows" }, [h("thead", {}, [head]), body]));
      return load();
    }).catch(function (e) {
      box.dataset.state = "error";
      box.append(h("div", { cls: "error", text: "table " + id + ": " + (e.message || e) }));
    });
    return widget;
  };

  // --- the record drawer -------------------------------------------------------------------------

  const FIRST = ["status", "reason", "agreement", "position", "orders", "scenario", "kind", "order", "group",
    "score", "winner", "human_score", "human_winner_shown", "human", "judge", "other_order", "instruction",
    "reference", "responses", "response", "response_a", "response_b", "rationale", "output", "messages"];

  T.openRow = async function (id, n, title) {
    const drawer = document.getElementById("drawer");
    const bodyEl = document.getElementById("drawer-body");
    document.getElementById("drawer-title").textContent = title + " · row " + n;
    bodyEl.replaceChildren(h("div", { cls: "muted", text: "loading…" }));
    drawer.hidden = false;
    drawer.dataset.row = n;
    try {
      const record = await T.data.tableRow(id, n);
      bodyEl.replaceChildren(renderRecord(record, id));
    } catch (e) {
      bodyEl.replaceChildren(h("div", { cls: "error", text: String(e.message || e) }));
    }
    drawer.dataset.state = "ready";
  };

  function renderRecord(record, id) {
    const keys = Object.keys(record).filter(function (k) { return k !== "_row"; });
    keys.sort(function (a, b) {
      const ia = FIRST.indexOf(a), ib = FIRST.indexOf(b);
      return (ia < 0 ? 999 : ia) - (ib < 0 ? 999 : ib);
    });
    const dl = h("dl", { cls: "record" });
    keys.forEach(function (k) {
      dl.append(h("dt", { text: k }), h("dd", {}, [value(k, record[k], record, id)]));
    });
    return dl;
  }

  function value(key, v, record, id) {
    if (v === null || v === undefined || v === "") return h("span", { cls: "muted", text: "—" });
    if (key === "other_order" && typeof v === "object" && "row" in v) {
      const a = h("a", { cls: "reason", text: "row " + v.row + " (" + v.order + "): " + v.verdict });
      a.addEventListener("click", function () { T.openRow(id, v.row, document.getElementById("drawer-title").textContent.split(" · row")[0]); });
      return a;
    }
    if (key === "messages" && Array.isArray(v)) {
      return h("details", {}, [h("summary", { text: v.length + " messages (the prompt as the judge saw it)" })].concat(
        v.map(function (m) { return h("div", {}, [h("b", { text: m.role }), h("pre", { text: m.content })]); })));
    }
    if (Array.isArray(v)) {
      if (!v.length) return h("span", { cls: "muted", text: "[]" });
      if (v.every(function (x) { return typeof x !== "object" || x === null; })) {
        const pair = key === "responses" && record.kind === "pairwise";
        return h("div", {}, v.map(function (x, i) {
          const label = pair ? "Response " + "AB"[i] + " (as shown)" : v.length > 1 ? String(i + 1) : null;
          return h("div", {}, [label ? h("b", { text: label }) : null, scalar(x)]);
        }));
      }
      return h("div", {}, v.map(function (x) { return value("", x, record, id); }));
    }
    if (typeof v === "object") return renderRecord(v, id);
    return scalar(v);
  }

  function scalar(v) {
    const s = String(v);
    return s.length > 80 || s.indexOf("\n") >= 0 ? h("pre", { text: s }) : h("span", { text: s });
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.getElementById("drawer-close").addEventListener("click", function () { document.getElementById("drawer").hidden = true; });
    document.addEventListener("keydown", function (e) { if (e.key === "Escape") document.getElementById("drawer").hidden = true; });
  });
})();
