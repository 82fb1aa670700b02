// The six sections of the workbench, one tab each (#run, #judgments, ...). Every section's data is
// one document from the data layer (themis/view/data.py); a section that the run cannot show
// arrives as {status: "missing", reason} and is shown as such.
(function () {
  "use strict";
  const T = window.Themis;
  const h = T.h;
  const SECTIONS = [["run", "Run"], ["judgments", "Judgments"], ["dataset", "Dataset"],
    ["training", "Training"], ["evaluation", "Evaluation"], ["compare", "Compare"]];
  const main = document.getElementById("main");
  const fmt = T.fmt;

  function tabs(active) {
    const nav = document.getElementById("tabs");
    nav.replaceChildren.apply(nav, SECTIONS.map(function (s) {
      return h("a", { href: "#" + s[0], cls: s[0] === active ? "active" : "", "data-tab": s[0], text: s[1] });
    }));
  }

  async function show(name) {
    tabs(name);
    const el = h("section", { id: "section-" + name, "data-section": name, "data-status": "loading" });
    main.replaceChildren(el);
    let doc;
    try {
      doc = await T.data.section(name);
    } catch (e) {
      el.append(h("h2", { text: title(name) }), h("div", { cls: "error", text: "could not load this section: " + (e.message || e) }));
      el.dataset.status = "error";
      return;
    }
    document.getElementById("run-root").textContent = doc.run_root || "";
    el.append(h("h2", { text: doc.title }));
    if (doc.status !== "ok") {
      el.append(h("div", { cls: "missing", text: doc.reason }));
      el.dataset.status = "missing";
      return;
    }
    (doc.warnings || []).forEach(function (w) { el.append(h("div", { cls: "warning", text: w })); });
    try {
      RENDER[name](el, doc);
      el.dataset.status = "ok";
    } catch (e) {
      el.append(h("div", { cls: "error", text: "could not draw this section: " + (e.message || e) }));
      el.dataset.status = "error";
    }
  }

  function title(name) { return SECTIONS.find(function (s) { return s[0] === name; })[1]; }
  function card(label, value) { return h("div", { cls: "card" }, [h("b", { text: value === null || value === undefined ? "—" : String(value) }), label]); }
  function grid(columns, rows) {
    const head = h("tr", {}, columns.map(function (c) { return h("th", { text: c, cls: /^(rows|n|value|count|calls|duration|cost|mean|std|p\d+|median|diff)/.test(c) ? "num" : "" }); }));
    return h("table", { cls: "grid" }, [h("thead", {}, [head]), h("tbody", {}, rows.map(function (r) {
      if (!Array.isArray(r)) return h("tr", { cls: "note" }, [h("td", {}), h("td", { colspan: columns.length - 1 }, [r])]);
      return h("tr", {}, r.map(function (c) { return c instanceof Node ? h("td", {}, [c]) : h("td", { text: c === null || c === undefined ? "—" : String(c), cls: typeof c === "number" ? "num" : "" }); }));
    }))]);
  }
  function ci(c) { return c ? "[" + fmt(c[0]) + ", " + fmt(c[1]) + "]" : "n/a"; }
  function images(el, rels) {
    if (!rels || !rels.length) return;
    el.append(h("div", { cls: "plots" }, rels.map(function (rel) { return h("img", { cls: "plot", src: "files/" + rel, alt: rel, title: rel }); })));
  }
  function reasonLinks(reasons, onClick) {
    if (!reasons || !reasons.length) return h("span", { cls: "muted", text: "—" });
    return h("div", {}, reasons.map(function (r) {
      const a = h("a", { cls: "reason", "data-reason": r.value, text: r.value + " (" + r.count + ")" });
      a.addEventListener("click", function () { onClick(r.value); });
      return h("div", {}, [a]);
    }));
  }
  function head(reason) { return reason.split(":")[0]; }
  function kv(obj) {
    return Object.keys(obj || {}).map(function (k) { const v = obj[k]; return k + " " + (typeof v === "number" ? fmt(v) : typeof v === "object" ? JSON.stringify(v) : v); }).join(", ");
  }
  function kilo(n) { return n >= 1e6 ? (n / 1e6).toFixed(1) + "M" : n >= 1e3 ? (n / 1e3).toFixed(1) + "k" : String(n); }

  const RENDER = {};

  RENDER.run = function (el, doc) {
    const ok = doc.stages.filter(function (s) { return s.status === "ok"; }).length;
    el.append(h("div", { cls: "cards" }, [card("stages ok", ok + " / " + doc.stages.length), card("stale", doc.stale.length ? doc.stale.join(", ") : "none")]));
    const panel = h("div", { id: "rejects-panel" });
    const rows = [];
    doc.stages.forEach(function (s) {
      const status = h("span", {}, [h("span", { cls: "badge " + s.status.replace(/\s/g, "-"), text: s.status })]);
      if (s.stale && s.stale.length) status.append(" ", h("span", { cls: "badge stale", text: "stale" }));
      const c = s.counts || {};
      const tokens = Object.values(s.usage || {}).reduce(function (a, u) { return [a[0] + (u.prompt_tokens || 0), a[1] + (u.completion_tokens || 0)]; }, [0, 0]);
      rows.push([h("b", { text: s.name, "data-stage": s.name }), status, s.finished_at ? s.finished_at.replace("T", " ") : null, s.duration_s === undefined ? null : s.duration_s + " s",
        c.rows_in, c.rows_out, c.rows_rejected,
        reasonLinks(s.rejected_by_reason, function (reason) { openRejects(panel, s, reason); }),
        s.reused_calls, tokens[0] || tokens[1] ? kilo(tokens[0]) + " in / " + kilo(tokens[1]) + " out" : null,
        s.cost_usd === null || s.cost_usd === undefined ? null : "$" + s.cost_usd,
        s.leftover_attempts && s.leftover_attempts.length ? s.leftover_attempts.length + " left in _attempts/" : null]);
      (s.stale || []).concat(s.notes || []).forEach(function (n) { rows.push(h("div", { cls: "warning", text: n })); });
    });
    el.append(grid(["stage", "status", "finished", "duration", "rows in", "rows out", "rows rejected", "rejects by reason", "calls reused", "tokens", "cost", "attempts"], rows));
    el.append(panel);
    if (doc.versions && Object.keys(doc.versions).length) {
      el.append(h("div", { cls: "muted", text: "versions: " + Object.entries(doc.versions).map(function (kv) { return kv[0] + " " + kv[1]; }).join(", ") }));
    }
  };

  function openRejects(panel, stage, reason) {
    panel.replaceChildren();
    if (!stage.rejects_table) {
      panel.append(h("div", { cls: "missing", text: "the " + stage.name + " stage wrote no rejects file; the manifest's counts are all there is" }));
      return;
    }
    T.table(panel, stage.rejects_table, { filters: { reason: head(reason) }, title: "Rows " + stage.name + " rejected" });
    panel.scrollIntoView({ block: "start" });
  }

  RENDER.judgments = function (el, doc) {
    const count = function (list, v) { const f = (list || []).find(function (x) { return x.value === v; }); return f ? f.count : 0; };
    el.append(h("div", { cls: "cards" }, [card("judgments", doc.total), card("parsed", doc.parsed),
      card("not parsed", doc.total - doc.parsed), card("pairs: orders disagree (rows)", count(doc.orders, "orders disagree"))]));
    if (doc.parse_rate) el.append(h("div", { cls: "muted", text: "parse rate: " + kv(doc.parse_rate) }));
    const scores = Object.keys(doc.scores);
    if (scores.length) {
      el.append(h("h3", { text: "Score distribution per scenario (single and reference-guided)" }));
      const box = h("div", { cls: "charts", id: "score-charts" });
      el.append(box);
      scores.forEach(function (s) { T.bars(box, { title: s, labels: ["1", "2", "3", "4", "5"], series: [{ name: "judgments", values: ["1", "2", "3", "4", "5"].map(function (k) { return doc.scores[s][k] || 0; }) }] }); });
    }
    const winners = Object.keys(doc.winners);
    if (winners.length) {
      el.append(h("h3", { text: "Pairwise verdicts per scenario, by order shown (A = the first response shown)" }));
      const box = h("div", { cls: "charts" });
      el.append(box);
      winners.forEach(function (s) {
        const orders = Object.keys(doc.winners[s]);
        T.bars(box, { title: s, labels: ["A", "B", "tie"], series: orders.map(function (o) { return { name: o, values: ["A", "B", "tie"].map(function (w) { return doc.winners[s][o][w] || 0; }) }; }) });
      });
    }
    if (doc.self_consistency) el.append(h("div", { cls: "muted", text: "self-consistency: " + JSON.stringify(doc.self_consistency.agreement_rate) }));
    T.table(el, "judgments");
  };

  RENDER.dataset = function (el, doc) {
    const r = doc.report;
    el.append(h("div", { cls: "cards" }, [card("judgments in", r.rows_in), card("kept", r.rows_kept), card("rejected", r.rows_rejected),
      card("augmented", r.rows_augmented), card("train", r.train), card("validation", r.validation)]));
    el.append(h("h3", { text: "Steps" }));
    el.append(grid(["step", "rows in", "rows added", "rows out", "rows rejected"], doc.steps.map(function (s) {
      return [s.step, s.rows_in, s.rows_added || 0, s.rows_out, s.rows_rejected];
    })));
    let rejects = null;
    el.append(h("h3", { text: "Why the rest went" }));
    el.append(h("div", { cls: "side" }, [
      h("div", {}, [h("b", { text: "dropped by this stage (click to list)" }), reasonLinks(doc.rejected_by_reason, function (reason) {
        if (rejects) { rejects.setFilter("reason", head(reason)); rejects.box.scrollIntoView({ block: "start" }); }
      })]),
      h("div", {}, [h("b", { text: "dropped before it, by the judgments stage (self-consistency, parse failures)" }), reasonLinks(doc.before_dataset, function () { location.hash = "#judgments"; })]),
    ]));
    const kinds = Object.keys(r.kept_by_kind || {}), scenarios = Object.keys(r.kept_by_scenario || {});
    const kept = h("div", { cls: "charts" });
    el.append(h("h3", { text: "What was kept" }), kept);
    if (kinds.length) T.bars(kept, { title: "kept by kind", labels: kinds, series: [{ name: "kept", values: kinds.map(function (k) { return r.kept_by_kind[k]; }) }] });
    if (scenarios.length) T.bars(kept, { title: "kept by scenario", width: 420, labels: scenarios, series: [{ name: "kept", values: scenarios.map(function (k) { return r.kept_by_scenario[k]; }) }] });
    if (doc.ifd) {
      el.append(h("h3", { text: "IFD per scenario (instruction-following difficulty; kept and dropped by selection)" }));
      const box = h("div", { cls: "charts", id: "ifd-charts" });
      el.append(box);
      const labels = doc.ifd.edges.slice(0, -1).map(function (e) { return fmt(e); });
      Object.keys(doc.ifd.scenarios).forEach(function (s) {
        const hist = doc.ifd.scenarios[s];
        T.bars(box, { title: s, width: 320, stacked: true, labels: labels, series: [{ name: "kept", values: hist.kept }, { name: "dropped", values: hist.dropped }] });
      });
      const dist = doc.selection && doc.selection.ifd_by_scenario;
      if (dist) {
        el.append(grid(["scenario", "n", "mean", "std", "p10", "median", "p90"], Object.keys(dist).map(function (s) {
          const d = dist[s]; return [s, d.n, d.mean, d.std, d.p10, d.median, d.p90];
        })));
      }
    }
    images(el, doc.images);
    if (doc.augmentation) {
      el.append(h("h3", { text: "Augmented records" }));
      el.append(h("div", { cls: "muted", text: "added: " + (doc.augmentation.rows_added || 0) + "; by kind: " + JSON.stringify(doc.augmentation.by_kind || {}) + (doc.augmentation.skipped_by_reason ? "; not augmented: " + JSON.stringify(doc.augmentation.skipped_by_reason) : "") }));
    }
    if (doc.tables.indexOf("dataset-records") >= 0) T.table(el, "dataset-records");
    if (doc.tables.indexOf("rejects-dataset") >= 0) rejects = T.table(el, "rejects-dataset", { title: "Judgments this stage dropped" });
  };

  RENDER.training = function (el, doc) {
    el.append(h("div", { cls: "muted", text: "from " + doc.source }));
    el.append(h("div", { cls: "cards" }, Object.keys(doc.facts).map(function (k) {
      const v = doc.facts[k]; return card(k, Array.isArray(v) ? v.join(", ") : typeof v === "number" ? fmt(v) : v);
    })));
    const box = h("div", { cls: "charts", id: "training-charts" });
    el.append(box);
    Object.keys(doc.charts).forEach(function (name) {
      const chart = doc.charts[name];
      T.lines(box, { title: name, xlabel: "step", series: Object.keys(chart).map(function (tag) {
        return { name: tag, points: chart[tag], dots: tag === "loss/validation_ce" };
      }) });
    });
    images(el, doc.images);
  };

  RENDER.evaluation = function (el, doc) {
    const holder = h("div");
    if (doc.reports.length > 1) {
      const select = h("select", { cls: "report", "data-report-select": "" }, doc.reports.map(function (r) {
        return h("option", { value: r.index, text: r.id + " (" + (r.benchmark.id || "?") + ", " + (r.benchmark.items || "?") + " items)" });
      }));
      select.addEventListener("change", function () { report(holder, doc.reports[+select.value]); });
      el.append(h("label", {}, ["report ", select]));
    }
    el.append(holder);
    (doc.suites || []).forEach(function (s) { el.append(h("div", { cls: "muted", text: "suite " + s.id + ": aggregate " + JSON.stringify(s.aggregate) })); });
    report(holder, doc.reports[0]);
  };

  function report(holder, r) {
    holder.replaceChildren();
    holder.dataset.report = r.id;
    holder.append(h("div", { cls: "cards" }, [card("judge", r.judge), card("benchmark", r.benchmark.id), card("items", r.benchmark.items),
      card("overall (normalised)", fmt(r.overall))]));
    holder.append(h("div", { cls: "muted", text: "source: " + (r.benchmark.source || "?") }));
    (r.warnings || []).forEach(function (w) { holder.append(h("div", { cls: "warning", text: w })); });
    Object.keys(r.families).forEach(function (family) {
      const f = r.families[family];
      const metrics = Object.keys(f.metrics);
      holder.append(h("h3", { text: family + " metrics with " + "95% intervals" }));
      holder.append(grid(["metric", "value", "interval", "chance"], metrics.map(function (m) {
        return [m, fmt(f.metrics[m].value), ci(f.metrics[m].ci), f.chance && f.chance[m] !== undefined ? fmt(f.chance[m]) : null];
      })));
      const box = h("div", { cls: "charts" });
      holder.append(box);
      T.intervals(box, { title: family + ": value and interval (dashed: chance)", rows: metrics.filter(function (m) { return f.metrics[m].value !== null; }).map(function (m) {
        return { label: m, value: f.metrics[m].value, ci: f.metrics[m].ci, reference: f.chance ? f.chance[m] : null };
      }) });
      if (f.position) {
        const labels = Object.keys(f.position.judge || {});
        holder.append(h("div", { cls: "muted", text: "position (share of verdicts): judge: " + kv(f.position.judge) + "; humans: " + kv(f.position.human) }));
        if (labels.length) T.bars(box, { title: "verdict shares: judge vs humans", labels: labels, series: [{ name: "judge", values: labels.map(function (k) { return f.position.judge[k]; }) }, { name: "humans", values: labels.map(function (k) { return (f.position.human || {})[k] || 0; }) }] });
      }
      const groups = Object.keys(f.groups || {});
      if (groups.length) {
        const keys = Object.keys(f.groups[groups[0]]).filter(function (k) { return k !== "n" && !/_ci$/.test(k); });
        const headline = keys[0];
        T.intervals(box, { title: family + " " + headline + " by group", rows: groups.slice(0, 40).map(function (g) {
          return { label: g + " (n=" + f.groups[g].n + ")", value: f.groups[g][headline], ci: f.groups[g][headline + "_ci"] };
        }) });
      }
      holder.append(h("div", { cls: "muted", text: "counts: " + kv(f.counts) }));
    });
    if (r.reference_effect) holder.append(h("div", { cls: "muted", text: "reference effect: " + JSON.stringify(r.reference_effect) }));
    images(holder, r.images);
    T.table(holder, r.table, { title: "Items: human vs judge (" + r.id + ")" });
  }

  RENDER.compare = function (el, doc) {
    const pickable = doc.reports.slice(0, T.data.mode() === "static" ? doc.precomputed : doc.reports.length);
    const pick = function (attr, value) {
      const s = h("select", { cls: "report", "data-compare": attr }, pickable.map(function (r) { return h("option", { value: r.index, text: r.id + " · " + r.benchmark }); }));
      s.value = value;
      s.addEventListener("change", draw);
      return s;
    };
    const a = pick("a", doc.default[0]), b = pick("b", doc.default[1]);
    const out = h("div", { id: "compare-result" });
    el.append(h("div", { cls: "filters" }, [h("label", {}, ["A", a]), h("label", {}, ["B (the baseline)", b])]), out);
    if (pickable.length < doc.reports.length) el.append(h("div", { cls: "muted", text: "this static page holds comparisons of the first " + pickable.length + " reports; `themis view` compares any two" }));
    async function draw() {
      out.replaceChildren();
      out.dataset.state = "loading";
      if (a.value === b.value) { out.append(h("div", { cls: "missing", text: "pick two different reports" })); out.dataset.state = "ready"; return; }
      let c;
      try { c = await T.data.compare(a.value, b.value); } catch (e) { out.append(h("div", { cls: "error", text: String(e.message || e) })); out.dataset.state = "error"; return; }
      out.append(h("h3", { text: c.a.name + " vs " + c.b.name }));
      out.append(h("div", { cls: c.same_items ? "muted" : "warning", text: (c.same_items ? "same items; " : "different items: ") + "test: " + c.test }));
      out.append(grid(["metric", c.a.name, "interval", c.b.name, "interval", "difference", "paired interval", ""], c.rows.map(function (r) {
        return [r.metric, fmt(r.a.value), ci(r.a.ci), fmt(r.b.value), ci(r.b.ci), fmt(r.difference), r.paired_ci ? ci(r.paired_ci) : null, r.significant ? "*" : ""];
      })));
      out.append(h("div", {}, ["overall (normalised): " + fmt(c.a.overall) + " vs " + fmt(c.b.overall) + (c.relative_gap === null ? "" : "; relative gap of " + c.a.name + " over " + c.b.name + ": " + (c.relative_gap * 100).toFixed(1) + "%")]));
      const box = h("div", { cls: "charts" });
      out.append(box);
      T.intervals(box, { title: "both judges, value and interval", legend: [c.a.name, c.b.name], rows: c.rows.filter(function (r) { return r.a.value !== null || r.b.value !== null; }).map(function (r) {
        return { label: r.metric, points: [{ name: c.a.name, value: r.a.value, ci: r.a.ci }, { name: c.b.name, value: r.b.value, ci: r.b.ci }] };
      }) });
      out.append(h("details", {}, [h("summary", { text: "as `themis evaluate compare` prints it (Markdown)" }), h("pre", { text: c.markdown })]));
      out.dataset.state = "ready";
    }
    draw();
  };

  function route() {
    const name = (location.hash || "#run").slice(1).split("/")[0];
    show(SECTIONS.some(function (s) { return s[0] === name; }) ? name : "run");
  }
  window.addEventListener("hashchange", route);
  route();
})();
