// The dashboard's JavaScript: reads the /v1 API with the key stored in this browser.
// Plain ES2020, no build step. One page at a time, chosen by <body data-page>.
"use strict";

(() => {
  const KEY_STORAGE = "backprop.apiKey";
  const HEADLINE_METRICS = ["loss", "val_loss", "accuracy", "val_accuracy", "mae", "val_mae", "r2", "val_r2",
                            "epoch", "epochs_run"];
  const COLOURS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04",
                   "#db2777", "#4b5563", "#65a30d"];
  const body = document.body;
  const FLAG_EXPLANATIONS = JSON.parse(document.getElementById("flag-explanations").textContent);
  // The statuses a job never leaves, as the server renders them (service/core/statuses.py).
  const STATUS = JSON.parse(document.getElementById("job-statuses").textContent);
  const TERMINAL = JSON.parse(document.getElementById("terminal-statuses").textContent);
  // Exposed for the browser tests and for poking around in the console.
  const dashboard = (window.dashboard = { charts: {}, records: [] });

  // --- helpers -----------------------------------------------------------------------------

  const $ = (selector) => document.querySelector(selector);
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) {
      if (value === undefined || value === null || value === false) continue;
      if (name === "class") node.className = value;
      else if (name === "text") node.textContent = value;
      else node.setAttribute(name, value === true ? "" : value);
    }
    for (const child of children.flat()) {
      if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  function num(value, digits = 4) {
    if (value === null || value === undefined) return "–";
    if (typeof value !== "number") return String(value);
    if (!Number.isFinite(value)) return String(value);
    if (Number.isInteger(value)) return String(value);
    return Number(value.toPrecision(digits)).toString();
  }

  function when(iso) {
    return iso ? new Date(iso).toLocaleString(undefined, { dateStyle: "short", timeStyle: "medium" }) : "–";
  }

  function notice(message) {
    const box = $("#notice");
    box.textContent = message;
    box.hidden = !message;
  }

  // --- the API, with the key ---------------------------------------------------------------

  class Problem extends Error {
    constructor(status, document) {
      const detail = document && (document.detail || document.title);
      super(detail ? `${status}: ${detail}` : `the API answered ${status}`);
      this.status = status;
      this.document = document;
    }
  }

  function authHeaders(headers = {}) {
    const all = new Headers(headers);
    const key = localStorage.getItem(KEY_STORAGE);
    if (key) all.set("Authorization", `Bearer ${key}`);
    return all;
  }

  // fetch a /v1 path; on 401 ask for a key. `raw` returns the Response (for streams).
  async function api(path, { method = "GET", json, headers, raw = false, signal } = {}) {
    const options = { method, headers: authHeaders(headers), signal };
    if (json !== undefined) {
      options.headers.set("Content-Type", "application/json");
      options.body = JSON.stringify(json);
    }
    const response = await fetch(path, options);
    if (response.status === 401) {
      const document = await response.json().catch(() => null);
      askForKey(document && document.detail);
      throw new Problem(401, document);
    }
    if (raw && response.ok) return response;
    const document = response.status === 204 ? null : await response.json().catch(() => null);
    if (!response.ok) throw new Problem(response.status, document);
    return document;
  }

  function askForKey(reason) {
    const form = $("#key-form");
    $("#key-detail").textContent = reason ? `The API said: ${reason}` : "";
    form.hidden = false;
    $("#key-input").focus();
  }

  function setUpKeyForm() {
    $("#key-form").addEventListener("submit", (event) => {
      event.preventDefault();
      localStorage.setItem(KEY_STORAGE, $("#key-input").value.trim());
      location.reload();
    });
    $("#key-forget").addEventListener("click", () => {
      localStorage.removeItem(KEY_STORAGE);
      location.reload();
    });
    $("#key-button").addEventListener("click", () => askForKey());
  }

  // Run a page's loader; say what went wrong unless it was a missing key (the form says that).
  async function guarded(action) {
    try {
      await action();
    } catch (error) {
      if (!(error instanceof Problem && error.status === 401)) notice(error.message || String(error));
      throw error;
    }
  }

  function statusBadge(status) {
    return el("span", { class: `status ${status}`, text: status });
  }

  function progressBar(job) {
    const { epoch, epochs } = job.progress || { epoch: 0, epochs: 0 };
    const percent = epochs ? Math.min(100, (100 * epoch) / epochs) : 0;
    const bar = el("div", { class: `bar ${job.status}`, role: "progressbar", "aria-valuemin": 0,
                            "aria-valuemax": 100, "aria-valuenow": Math.round(percent) }, el("span"));
    bar.firstChild.style.width = `${percent}%`;
    return bar;
  }

  // --- jobs list ---------------------------------------------------------------------------

  function fillTable(selector, rows, columns, empty) {
    const tbody = $(`${selector} tbody`);
    tbody.replaceChildren(...(rows.length ? rows : [el("tr", { class: "empty" },
      el("td", { colspan: columns, text: empty }))]));
  }

  async function loadJobs() {
    const jobs = (await api("/v1/jobs?limit=50")).items;
    fillTable("#jobs", jobs.map((job) => {
      const metrics = job.metrics || {};
      return el("tr", { "data-job-id": job.id, "data-status": job.status },
        el("td", {}, el("a", { href: `/ui/jobs/${encodeURIComponent(job.id)}` }, el("code", { text: job.id }))),
        el("td", {}, statusBadge(job.status)),
        el("td", {}, progressBar(job), " ", el("span", { class: "muted",
          text: `${job.progress.epoch}/${job.progress.epochs}` })),
        el("td", { text: num(metrics.loss) }),
        el("td", { text: num(metrics.val_loss) }),
        el("td", { text: when(job.created_at) }),
        el("td", {}, job.model_id ? el("a", { href: `/ui/models/${encodeURIComponent(job.model_id)}` },
          el("code", { text: job.model_id })) : "–"));
    }), 7, "No job yet: POST /v1/jobs or `backprop train`.");
    return jobs.some((job) => !TERMINAL.includes(job.status));
  }

  async function loadModels() {
    const models = (await api("/v1/models?limit=50")).items;
    fillTable("#models", models.map((model) => {
      const metrics = model.metrics || {};
      const headline = model.task === "classification"
        ? `accuracy ${num(metrics.val_accuracy ?? metrics.accuracy)}`
        : `r² ${num(metrics.val_r2 ?? metrics.r2)}`;
      return el("tr", { "data-model-id": model.id },
        el("td", {}, el("a", { href: `/ui/models/${encodeURIComponent(model.id)}` }, el("code", { text: model.id }))),
        el("td", { text: model.task }),
        el("td", { class: "wrap", text: (model.classes || model.targets || []).join(", ") }),
        el("td", { text: headline }));
    }), 4, "No model yet.");
  }

  async function loadDatasets() {
    const datasets = (await api("/v1/datasets?limit=50")).items;
    fillTable("#datasets", datasets.map((dataset) => el("tr", { "data-dataset-id": dataset.id },
      el("td", { title: dataset.id, text: dataset.name }),
      el("td", { text: dataset.n_rows }),
      el("td", { text: dataset.task }),
      el("td", { text: (dataset.targets || []).join(", ") }))), 4, "No dataset yet.");
  }

  async function jobsPage() {
    await guarded(() => Promise.all([loadJobs(), loadModels(), loadDatasets()]));
    refreshJobs(); // in the background: the page is ready now
  }

  // Poll while something is queued or running; then once more for the models it made.
  async function refreshJobs() {
    for (let active = true; active;) {
      await sleep(1500);
      try {
        active = await loadJobs();
        if (!active) await loadModels();
      } catch (error) {
        if (error instanceof Problem && error.status === 401) return;
        notice(error.message); // a restart of the API, say: keep trying
      }
    }
  }

  // --- charts ------------------------------------------------------------------------------

  function chart(name, container, title, seriesLabels, { log = false, yLabel = "" } = {}) {
    const target = $(container);
    const width = Math.max(300, target.clientWidth || 500);
    // Mean absolute error is not on R²'s scale: it gets an axis of its own, on the right.
    const scaleOf = (label) => (label.endsWith("mae") ? "mae" : "y");
    const axes = [{ label: "epoch" }, { scale: "y", label: yLabel, size: 60 }];
    if (seriesLabels.some((label) => scaleOf(label) === "mae")) {
      axes.push({ scale: "mae", side: 1, label: "MAE", size: 60, grid: { show: false } });
    }
    const options = {
      width, height: 240,
      scales: { x: { time: false }, y: log ? { distr: 3, log: 10 } : {}, mae: {} },
      axes,
      series: [{ label: "epoch" }, ...seriesLabels.map((label, k) => ({
        label, scale: scaleOf(label), stroke: COLOURS[k % COLOURS.length], width: 2, points: { size: 5 },
        dash: label.startsWith("val_") ? [6, 4] : undefined,
        value: (u, v) => num(v),
      }))],
      legend: { live: true },
    };
    const data = [[], ...seriesLabels.map(() => [])];
    target.replaceChildren();
    const plot = new uPlot(options, data, target);
    dashboard.charts[name] = plot;
    target.dataset.series = seriesLabels.join(",");
    target.dataset.scale = log ? "log" : "linear";
    return plot;
  }

  // The series of each chart, from the records: [labels, (record) => values].
  function lossSeries(records) {
    const labels = ["loss"];
    if (records.some((r) => r.val_loss !== undefined)) labels.push("val_loss");
    return labels;
  }

  function metricSeries(records) {
    const has = (key) => records.some((r) => r[key] !== undefined && r[key] !== null);
    if (has("accuracy")) return ["accuracy", "val_accuracy"].filter(has);
    if (has("r2")) return ["r2", "val_r2", "mae", "val_mae"].filter(has);
    return [];
  }

  function layerNames(records) {
    const names = [];
    for (const record of records) {
      for (const [name, layer] of Object.entries(record.layers || {})) {
        if (layer.grad_norm !== undefined && !names.includes(name)) names.push(name);
      }
    }
    return names;
  }

  const charts = {
    keys: { loss: null, metric: null, grad: null },

    // (Re)draw the three charts from all records so far; rebuild one when its series change.
    draw(records) {
      const epochs = records.map((r) => r.epoch);
      const plan = {
        loss: ["#loss-chart", lossSeries(records), (r, k) => r[k], {}],
        metric: ["#metric-chart", metricSeries(records), (r, k) => r[k], {}],
        grad: ["#grad-chart", layerNames(records), (r, k) => {
          const norm = r.layers && r.layers[k] && r.layers[k].grad_norm;
          return norm > 0 ? norm : null; // a log axis has no room for zero
        }, { log: true, yLabel: "grad norm" }],
      };
      for (const [name, [container, labels, value, options]] of Object.entries(plan)) {
        if (!labels.length) continue;
        const signature = labels.join(",");
        let plot = dashboard.charts[name];
        if (this.keys[name] !== signature) {
          plot = chart(name, container, name, labels, options);
          this.keys[name] = signature;
        }
        plot.setData([epochs, ...labels.map((k) => records.map((r) => value(r, k) ?? null))]);
        $(container).dataset.points = String(epochs.length);
      }
      if (records.some((r) => r.r2 !== undefined)) {
        $("#metric-title").textContent = "R² and mean absolute error";
        $("#metric-help").textContent = "Regression metrics per epoch, training and validation: R² on the left "
          + "axis, mean absolute error on the right (of the standardized target, as trained).";
      }
    },
  };

  // --- one job -----------------------------------------------------------------------------

  function renderFlags(records) {
    const seen = new Map(); // flag -> epochs
    for (const record of records) {
      for (const flag of record.flags || []) {
        if (!seen.has(flag)) seen.set(flag, []);
        seen.get(flag).push(record.epoch);
      }
    }
    const list = $("#flags");
    if (!seen.size) {
      list.replaceChildren(el("li", { class: "muted", text: "No flag so far." }));
      return;
    }
    list.replaceChildren(...[...seen].map(([flag, epochs]) => {
      const span = epochs.length > 1 ? `epochs ${epochs[0]}–${epochs[epochs.length - 1]} (${epochs.length})`
                                     : `epoch ${epochs[0]}`;
      return el("li", { "data-flag": flag }, el("span", { class: "flag", text: flag }), ` (${span}): `,
                FLAG_EXPLANATIONS[flag] || "");
    }));
  }

  function renderSummary(pairs) {
    $("#summary").replaceChildren(...pairs.flatMap(([term, value]) => [el("dt", { text: term }),
                                                                        el("dd", {}, value)]));
  }

  function jobView(jobId) {
    const records = new Map(); // epoch -> record; a resumed job sends some again
    let job = null;

    function update(next) {
      job = next;
      $("#status").textContent = job.status;
      $("#status").className = `status ${job.status}`;
      body.dataset.status = job.status;
      const bar = progressBar(job);
      bar.id = "progress";
      $("#progress").replaceWith(bar);
      $("#progress-text").textContent = `epoch ${job.progress.epoch} of ${job.progress.epochs}`;
      $("#cancel").hidden = TERMINAL.includes(job.status);
      if (TERMINAL.includes(job.status)) $("#live").textContent = "";
      const error = $("#error");
      error.textContent = job.error || "";
      error.hidden = !job.error;
      const training = job.training || {};
      renderSummary([
        ["dataset", el("code", { text: job.dataset_id })],
        ["network", job.network_id ? el("code", { text: job.network_id }) : describeNetwork(job.network)],
        ["training", `${training.epochs} epochs, ${training.optimizer} at ${training.learning_rate}, `
                     + `batch ${training.batch_size}, ${training.loss}`],
        ["device", job.device],
        ["created", when(job.created_at)],
        ["finished", when(job.finished_at)],
      ]);
      if (TERMINAL.includes(job.status) && job.metrics) {
        $("#final").hidden = false;
        $("#final-metrics tbody").replaceChildren(...Object.entries(job.metrics).map(([key, value]) =>
          el("tr", { "data-metric": key }, el("td", { text: key }), el("td", { text: Array.isArray(value) ? value.join(", ") || "none" : num(value, 5) }))));
        $("#model-link").replaceChildren(...(job.model_id ? ["Model: ", el("a", {
          href: `/ui/models/${encodeURIComponent(job.model_id)}` }, el("code", { text: job.model_id }))] : []));
      }
    }

    function add(record) {
      records.set(record.epoch, record);
      const all = [...records.values()].sort((a, b) => a.epoch - b.epoch);
      dashboard.records = all;
      charts.draw(all);
      renderFlags(all);
      if (job && !TERMINAL.includes(job.status)) {
        update({ ...job, status: STATUS.RUNNING, progress: { ...job.progress, epoch: record.epoch } });
      }
    }

    const lastEpoch = () => Math.max(0, ...records.keys());

    // The job's epoch records after epoch `after`: every page of them, oldest first.
    async function history(after = 0) {
      const all = { epochs: [] };
      let cursor = after ? String(after) : null;
      do {
        const query = `?limit=1000${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`;
        const page = await api(`/v1/jobs/${encodeURIComponent(jobId)}/metrics${query}`);
        all.status = page.status;
        all.epochs.push(...page.epochs);
        cursor = page.next_cursor;
      } while (cursor);
      return all;
    }

    // Read the SSE stream with fetch (EventSource cannot send the Authorization header).
    // Resolve true once the final status event came, false when the server ended the stream early.
    async function stream() {
      const response = await api(`/v1/jobs/${encodeURIComponent(jobId)}/events`, {
        raw: true, headers: { Accept: "text/event-stream", "Last-Event-ID": String(lastEpoch()) } });
      if (!response.body) throw new Error("this browser cannot read a streamed response");
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return false;
        buffer += value.replace(/\r\n?/g, "\n");
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          let kind = "message";
          const data = [];
          for (const line of block.split("\n")) {
            if (line.startsWith("event:")) kind = line.slice(6).trim();
            else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
          }
          if (!data.length) continue; // a comment, a retry: line
          const event = JSON.parse(data.join("\n"));
          if (kind === "epoch") add(event);
          if (kind === "status") {
            reader.cancel().catch(() => {});
            return true;
          }
        }
      }
    }

    // Without streaming (a proxy that buffers, an old browser): poll /metrics every second.
    async function poll() {
      $("#live").textContent = "Polling for new epochs every second.";
      for (;;) {
        const newer = await history(lastEpoch());
        newer.epochs.filter((r) => !records.has(r.epoch)).forEach(add);
        if (TERMINAL.includes(newer.status)) return;
        await sleep(1000);
      }
    }

    async function follow() {
      let failures = 0;
      while (!TERMINAL.includes(job.status)) {
        $("#live").textContent = "Live: each epoch adds a point as it finishes.";
        try {
          if (await stream()) break;
          failures = 0; // the server's time limit on a stream: reconnect where it left off
        } catch (error) {
          if (error instanceof Problem && error.status === 401) throw error;
          if (++failures >= 2) {
            await poll();
            break;
          }
          await sleep(1000);
        }
      }
      update(await api(`/v1/jobs/${encodeURIComponent(jobId)}`));
      // Epochs written in the same transaction as the end are in the stream already; this is for polling races.
      (await history()).epochs.filter((r) => !records.has(r.epoch)).forEach(add);
      $("#live").textContent = "";
    }

    $("#cancel").addEventListener("click", async () => {
      $("#cancel").disabled = true;
      try {
        update(await api(`/v1/jobs/${encodeURIComponent(jobId)}/cancel`, { method: "POST" }));
      } catch (error) {
        notice(error.message);
      } finally {
        $("#cancel").disabled = false;
      }
    });

    return guarded(async () => {
      const [first, earlier] = await Promise.all([api(`/v1/jobs/${encodeURIComponent(jobId)}`), history()]);
      update(first);
      earlier.epochs.forEach(add);
      await follow();
    });
  }

  // --- networks ----------------------------------------------------------------------------

  // The definition as named nodes with inputs; a stack is a chain (names as the engine gives them).
  function graphNodes(definition) {
    if (definition.layers) {
      let previous = "input";
      return definition.layers.map((layer, index) => {
        const name = layer.name || `${layer.type}_${index}`;
        const node = { ...layer, name, inputs: [previous] };
        previous = name;
        return node;
      });
    }
    return definition.nodes.map((node) => ({ ...node }));
  }

  function describeNetwork(definition) {
    if (!definition) return "–";
    const nodes = graphNodes(definition);
    return nodes.map((n) => (n.type === "dense" ? `dense ${n.units}${n.activation ? ` ${n.activation}` : ""}` : n.type))
      .join(" → ");
  }

  function nodeLabel(node) {
    if (node.type === "dense") return `dense ${node.units} · ${node.activation || "linear"}`;
    if (node.type === "activation") return `activation · ${node.activation}`;
    if (node.type === "dropout") return `dropout · rate ${node.rate}`;
    return node.type;
  }

  // An SVG of the network: one column per topological layer, an edge per input.
  function drawGraph(definition, features, inputWidth) {
    const SVG = "http://www.w3.org/2000/svg";
    const svg = (tag, attrs = {}, ...children) => {
      const node = document.createElementNS(SVG, tag);
      for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
      node.append(...children);
      return node;
    };
    const nodes = graphNodes(definition);
    const output = definition.output || nodes[nodes.length - 1].name;
    const depth = { input: 0 };
    const byName = Object.fromEntries(nodes.map((n) => [n.name, n]));
    const depthOf = (name, seen = new Set()) => {
      if (name in depth) return depth[name];
      if (seen.has(name) || !byName[name]) return 0; // stored networks were validated; be safe anyway
      seen.add(name);
      depth[name] = 1 + Math.max(...byName[name].inputs.map((source) => depthOf(source, seen)));
      return depth[name];
    };
    nodes.forEach((n) => depthOf(n.name));
    const columns = [];
    for (const name of ["input", ...nodes.map((n) => n.name)]) {
      (columns[depth[name]] = columns[depth[name]] || []).push(name);
    }
    const W = 160, H = 62, GAP_X = 56, GAP_Y = 26, PAD = 16, LIFT = 16;
    // An edge that skips columns arcs above the nodes (or below: they alternate), higher the longer it is.
    const edges = nodes.flatMap((node) => node.inputs.filter((s) => s in depth).map((source) => ({ source,
      target: node.name, span: depth[node.name] - depth[source] })));
    let skips = 0;
    for (const edge of edges) {
      if (edge.span > 1) edge.side = skips++ % 2 === 0 ? "above" : "below";
    }
    const room = (side) => Math.max(0, ...edges.filter((e) => e.side === side).map((e) => LIFT * e.span));
    const tallest = Math.max(...columns.map((c) => c.length));
    const width = PAD * 2 + columns.length * W + (columns.length - 1) * GAP_X;
    const rows = tallest * H + (tallest - 1) * GAP_Y;
    const top = PAD + room("above");
    const height = top + rows + room("below") + PAD;
    const place = {};
    columns.forEach((names, c) => {
      const offset = top + (rows - (names.length * H + (names.length - 1) * GAP_Y)) / 2;
      names.forEach((name, r) => { place[name] = { x: PAD + c * (W + GAP_X), y: offset + r * (H + GAP_Y) }; });
    });
    const root = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
                              "aria-label": "the network as a graph" });
    root.append(svg("defs", {}, svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5,
      markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" }, svg("path", { d: "M 0 0 L 10 5 L 0 10 z",
      fill: "#9ca3af" }))));
    for (const { source, target, span, side } of edges) {
      const a = place[source], b = place[target];
      let d;
      if (!side) {
        const x1 = a.x + W, y1 = a.y + H / 2, x2 = b.x, y2 = b.y + H / 2;
        const bend = Math.max(20, (x2 - x1) / 2);
        d = `M ${x1} ${y1} C ${x1 + bend} ${y1}, ${x2 - bend} ${y2}, ${x2} ${y2}`;
      } else {
        const up = side === "above";
        const x1 = a.x + W * 0.7, x2 = b.x + W * 0.3;
        const y1 = up ? a.y : a.y + H, y2 = up ? b.y : b.y + H;
        const yc = up ? Math.min(y1, y2) - LIFT * span * 1.33 : Math.max(y1, y2) + LIFT * span * 1.33;
        d = `M ${x1} ${y1} C ${x1} ${yc}, ${x2} ${yc}, ${x2} ${y2}`;
      }
      root.append(svg("path", { class: "edge", "data-from": source, "data-to": target, d,
                                "marker-end": "url(#arrow)" }));
    }
    const box = (name, classes, lines) => {
      const { x, y } = place[name];
      const title = svg("title");
      title.textContent = [name, ...lines].join("\n");
      const text = lines.map((line, k) => {
        const t = svg("text", { x: x + 10, y: y + 34 + k * 14 });
        t.textContent = line;
        return t;
      });
      const label = svg("text", { x: x + 10, y: y + 18, class: "name" });
      label.textContent = name;
      root.append(svg("g", { class: classes, "data-node": name }, title,
        svg("rect", { x, y, width: W, height: H, rx: 7 }), label, ...text));
    };
    const encoded = inputWidth && inputWidth !== features.length ? ` → ${inputWidth} inputs` : "";
    box("input", "node input", [`${features.length} feature${features.length === 1 ? "" : "s"}${encoded}`]);
    for (const node of nodes) {
      const lines = [nodeLabel(node)];
      if (node.name === output) lines.push("output");
      box(node.name, `node${node.name === output ? " output" : ""}`, lines);
    }
    $("#graph").replaceChildren(root);
  }

  // --- one model ---------------------------------------------------------------------------

  function predictForm(model) {
    const fields = model.preprocessing.features.map((feature) => {
      let input;
      if (feature.kind === "string") {
        // A model trained with missing values here offers them: the empty choice sends null.
        const missing = feature.missing_category ? [el("option", { value: "", text: "(missing)" })] : [];
        input = el("select", { name: feature.name, "data-kind": "string" },
          ...feature.categories.map((c) => el("option", { value: c, text: c })), ...missing);
      } else if (feature.kind === "datetime") {
        input = el("input", { type: "text", name: feature.name, placeholder: "2020-01-31 or 2020-01-31T08:30",
                              "data-kind": "datetime" });
      } else {
        const start = Number.isFinite(feature.mean) ? Number(feature.mean.toPrecision(4)) : 0;
        input = el("input", { type: "number", step: "any", name: feature.name, value: start,
                              "data-kind": "numeric" });
      }
      return el("label", {}, feature.name, input);
    });
    $("#predict-fields").replaceChildren(...fields);
    $("#predict-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const record = {};
      for (const input of $("#predict-fields").querySelectorAll("[name]")) {
        // An empty field goes as null: a missing value, which the model's preprocessing imputes.
        const text = input.value.trim();
        record[input.name] = text === "" ? null : input.dataset.kind === "numeric" ? Number(text) : input.value;
      }
      const out = $("#prediction");
      $("#predict-fields").querySelectorAll("[aria-invalid]").forEach((i) => i.removeAttribute("aria-invalid"));
      try {
        const answer = await api(`/v1/models/${encodeURIComponent(model.id)}/predict`, {
          method: "POST", json: { records: [record] } });
        showPrediction(model, answer);
        notice("");
      } catch (error) {
        out.hidden = false;
        const problems = (error.document && error.document.errors) || [];
        const headline = problems.length ? `${error.status} ${error.document.title || ""}` : error.message;
        out.replaceChildren(el("p", { class: "error", text: headline }),
          ...problems.map((p) => el("p", { class: "error", text: `${p.field}: ${p.message}` })));
        // Mark the inputs the problems name (records[0].NAME).
        for (const p of problems) {
          const name = (p.field || "").replace(/^records\[0\]\./, "");
          const input = [...$("#predict-fields").querySelectorAll("[name]")].find((i) => i.name === name);
          if (input) input.setAttribute("aria-invalid", "true");
        }
      }
    });
  }

  function showPrediction(model, answer) {
    const out = $("#prediction");
    const prediction = answer.predictions[0];
    const parts = [];
    if (answer.probabilities) {
      parts.push(el("p", {}, "Predicted: ", el("span", { class: "label", id: "predicted-label", text: prediction })));
      const probabilities = answer.probabilities[0];
      parts.push(...answer.classes.map((label, k) => {
        const bar = el("div", { class: "bar" }, el("span"));
        bar.firstChild.style.width = `${(100 * probabilities[k]).toFixed(1)}%`;
        return el("div", { class: "prob", "data-class": label }, el("span", { text: label }), bar,
                  el("span", { text: `${(100 * probabilities[k]).toFixed(1)}%` }));
      }));
    } else {
      const values = Array.isArray(prediction) ? prediction : [prediction];
      parts.push(...model.targets.map((target, k) => el("p", {}, `${target}: `,
        el("span", { class: "label", id: k === 0 ? "predicted-label" : undefined, text: num(values[k], 6) }))));
    }
    out.replaceChildren(...parts);
    out.hidden = false;
  }

  function modelPage(modelId) {
    return guarded(async () => {
      const model = await api(`/v1/models/${encodeURIComponent(modelId)}`);
      const metrics = model.metrics || {};
      renderSummary([
        ["task", model.task],
        [model.task === "classification" ? "classes" : "targets",
         (model.classes || model.targets || []).join(", ")],
        ["features", model.features.join(", ")],
        ["parameters", num(model.parameter_count)],
        ["loss", model.loss],
        ["final metrics", HEADLINE_METRICS.filter((k) => typeof metrics[k] === "number")
          .map((k) => `${k} ${num(metrics[k])}`).join(" · ")],
        ["trained by", el("a", { href: `/ui/jobs/${encodeURIComponent(model.job_id)}` },
                          el("code", { text: model.job_id }))],
        ["created", when(model.created_at)],
      ]);
      // A model stores {spec, input_dim, dtype}; a job, the definition itself.
      const network = model.network.spec || model.network;
      drawGraph(network, model.features, model.network.input_dim);
      predictForm(model);
    });
  }

  // --- start -------------------------------------------------------------------------------

  setUpKeyForm();
  const pages = {
    jobs: () => jobsPage(),
    job: () => jobView(body.dataset.jobId),
    model: () => modelPage(body.dataset.modelId),
  };
  const run = pages[body.dataset.page];
  if (run) {
    run().then(() => { body.dataset.ready = "true"; }, () => { body.dataset.ready = "error"; });
  }
})();
