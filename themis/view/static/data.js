// Where the page gets its documents: the server's JSON API ("api"), or data/<key>.js files written
// by `themis view --out` ("static"), loaded as classic scripts because file:// pages may not fetch.
// Both answer the same calls with the same shapes; tables are filtered by the server in "api" mode
// and here, over the exported per-row filter values, in "static" mode (equality on the same strings).
(function () {
  "use strict";
  const T = (window.Themis = window.Themis || {});
  const received = new Map();
  const loading = new Map();

  T.receive = function (key, value) { received.set(key, value); };

  // A document the export could not write holds only {error}: it rejects, as a failed request does.
  function settle(key) {
    const value = received.get(key);
    const failed = value && typeof value === "object" && !Array.isArray(value) && Object.keys(value).length === 1 && value.error;
    return failed ? Promise.reject(new Error(value.error)) : Promise.resolve(value);
  }

  function loadStatic(key) {
    if (received.has(key)) return settle(key);
    if (loading.has(key)) return loading.get(key);
    const promise = new Promise(function (resolve, reject) {
      const script = document.createElement("script");
      script.src = "data/" + key + ".js";
      script.onload = function () {
        script.remove();
        if (received.has(key)) settle(key).then(resolve, reject);
        else reject(new Error("data/" + key + ".js holds no data"));
      };
      script.onerror = function () {
        script.remove();
        loading.delete(key);
        reject(new Error("missing data/" + key + ".js (an incomplete export?)"));
      };
      document.head.appendChild(script);
    });
    loading.set(key, promise);
    return promise;
  }

  async function api(key, params) {
    const query = params ? "?" + new URLSearchParams(params).toString() : "";
    const response = await fetch("api/" + key + query);
    let body;
    try { body = await response.json(); } catch (e) { throw new Error("api/" + key + ": " + response.status + " " + response.statusText); }
    if (!response.ok) throw new Error(body.error || response.statusText);
    return body;
  }

  function isStatic() { return T.config && T.config.mode === "static"; }

  // Static tables: the rows matching a filter set, computed once per filter set.
  const matches = new Map();
  async function staticMatching(id, filters) {
    const index = await loadStatic("table/" + id + "/index");
    const key = id + "|" + JSON.stringify(filters);
    if (matches.has(key)) return { index: index, rows: matches.get(key) };
    const wanted = [];
    for (const name of Object.keys(filters)) {
      if (filters[name] === "") continue;
      const attr = index.attrs[name];
      if (!attr) throw new Error("table " + id + " has no filter " + name);
      wanted.push([attr.codes, attr.values.indexOf(filters[name])]);
    }
    const n = index.meta.total;
    const out = [];
    for (let i = 0; i < n; i++) {
      let ok = true;
      for (let k = 0; k < wanted.length; k++) { if (wanted[k][0][i] !== wanted[k][1]) { ok = false; break; } }
      if (ok) out.push(i);
    }
    matches.set(key, out);
    return { index: index, rows: out };
  }

  async function staticPage(id, filters, offset, limit) {
    const found = await staticMatching(id, filters);
    const wanted = found.rows.slice(offset, offset + limit);
    const size = found.index.rows_chunk;
    const chunks = Array.from(new Set(wanted.map(function (n) { return Math.floor(n / size); })));
    const loaded = await Promise.all(chunks.map(function (k) { return loadStatic("table/" + id + "/rows/" + k); }));
    const byChunk = new Map(chunks.map(function (k, i) { return [k, loaded[i]]; }));
    const rows = wanted.map(function (n) { return byChunk.get(Math.floor(n / size))[n % size]; });
    return { total: found.rows.length, offset: offset, limit: limit, rows: rows };
  }

  async function staticRow(id, n) {
    const index = await loadStatic("table/" + id + "/index");
    const size = index.detail_chunk;
    const chunk = await loadStatic("table/" + id + "/detail/" + Math.floor(n / size));
    return chunk[n % size];
  }

  T.data = {
    mode: function () { return isStatic() ? "static" : "api"; },
    section: function (name) { return isStatic() ? loadStatic("section/" + name) : api("section/" + name); },
    compare: function (a, b) { return isStatic() ? loadStatic("compare/" + a + "-" + b) : api("compare/" + a + "-" + b); },
    tableMeta: function (id) {
      return isStatic() ? loadStatic("table/" + id + "/index").then(function (i) { return i.meta; }) : api("table/" + id + "/meta");
    },
    tablePage: function (id, filters, offset, limit) {
      if (isStatic()) return staticPage(id, filters, offset, limit);
      return api("table/" + id + "/page", Object.assign({}, filters, { offset: offset, limit: limit }));
    },
    tableRow: function (id, n) { return isStatic() ? staticRow(id, n) : api("table/" + id + "/row/" + n); },
  };
})();
