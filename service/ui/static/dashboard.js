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
  // How many jobs the compare view takes (service/ui/__init__.py).
  const COMPARE_LIMITS = JSON.parse(document.getElementById("compare-limits").textContent);
  // Exposed for the browser tests and for poking around in the console.
  const dashboard = (window.dashboard = { charts: {}, plots: {}, records: [] });

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

  // The jobs ticked for the compare view, in the order they were ticked (the first is the reference).
  const picked = new Set();

  function updateCompareButton() {
    const button = $("#compare");
    const count = picked.size;
    button.disabled = count < COMPARE_LIMITS.min || count > COMPARE_LIMITS.max;
    button.textContent = count ? `Compare ${count}` : "Compare";
    button.title = button.disabled ? `tick ${COMPARE_LIMITS.min} to ${COMPARE_LIMITS.max} jobs` : "";
  }

  function pickBox(job) {
    const box = el("input", { type: "checkbox", class: "pick", "aria-label": `compare ${job.id}`,
                              checked: picked.has(job.id) });
    box.addEventListener("change", () => {
      if (box.checked) picked.add(job.id);
      else picked.delete(job.id);
      updateCompareButton();
    });
    return box;
  }

  async function loadJobs() {
    const jobs = (await api("/v1/jobs?limit=50")).items;
    fillTable("#jobs", jobs.map((job) => {
      const metrics = job.metrics || {};
      return el("tr", { "data-job-id": job.id, "data-status": job.status },
        el("td", {}, pickBox(job)),
        el("td", {}, el("a", { href: `/ui/jobs/${encodeURIComponent(job.id)}` }, el("code", { text: job.id }))),
        el("td", {}, statusBadge(job.status)),
        el("td", {}, progressBar(job), " ", el("span", { class: "muted",
          text: `${job.progress.epoch}/${job.progress.epochs}` })),
        el("td", { text: num(metrics.loss) }),
        el("td", { text: num(metrics.val_loss) }),
        el("td", { text: when(job.created_at) }),
        el("td", {}, job.model_id ? el("a", { href: `/ui/models/${encodeURIComponent(job.model_id)}` },
          el("code", { text: job.model_id })) : "–"));
    }), 8, "No job yet: POST /v1/jobs or `backprop train`.");
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
    $("#compare").addEventListener("click", () => {
      location.href = `/ui/compare?jobs=${[...picked].map(encodeURIComponent).join(",")}`;
    });
    updateCompareButton();
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

  // A metric's value as text: a list (one per target) joined; a nested report (metrics.test) by its metrics.
  function metricText(value) {
    if (Array.isArray(value)) return value.map((v) => num(v, 5)).join(", ") || "none";
    if (value && typeof value === "object") {
      const inner = value.metrics || value;
      return Object.entries(inner).filter(([, v]) => typeof v === "number" || Array.isArray(v))
        .map(([k, v]) => `${k} ${Array.isArray(v) ? v.map((x) => num(x)).join("/") : num(v)}`).join(" · ");
    }
    return num(value, 5);
  }

  // A job's epoch records after epoch `after`: every page of them, oldest first.
  async function jobHistory(jobId, after = 0) {
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
          el("tr", { "data-metric": key }, el("td", { text: key }), el("td", { text: metricText(value) }))));
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
    const history = (after = 0) => jobHistory(jobId, after);

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
      await Promise.all([showLatestReport(model), modelActions(model)]);
    });
  }

  // --- the evaluation report: SVG charts -----------------------------------------------------

  const SVG_NS = "http://www.w3.org/2000/svg";

  function svgEl(tag, attrs = {}, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attrs)) {
      if (value !== undefined && value !== null) node.setAttribute(name, value);
    }
    for (const child of children.flat()) {
      if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  const finite = (v) => typeof v === "number" && Number.isFinite(v);

  // Round tick values covering [lo, hi], about `count` of them.
  function ticks(lo, hi, count = 5) {
    if (!(hi > lo)) return [lo];
    const rough = (hi - lo) / count;
    const magnitude = 10 ** Math.floor(Math.log10(rough));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * magnitude).find((s) => s >= rough);
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
    return out;
  }

  // The [min, max] of the finite values, widened by `pad` of the span (a point gets a span of its own).
  function extent(values, pad = 0.04) {
    const seen = values.filter(finite);
    if (!seen.length) return [0, 1];
    let lo = Math.min(...seen), hi = Math.max(...seen);
    if (lo === hi) {
      const half = Math.abs(lo) / 2 || 0.5;
      return [lo - half, hi + half];
    }
    const margin = (hi - lo) * pad;
    return [lo - margin, hi + margin];
  }

  // An SVG with a plot area, grid, ticks and axis labels; x(v) and y(v) map values to pixels.
  function frame({ width = 440, height = 300, xDomain, yDomain, xLabel = "", yLabel = "", left = 56 }) {
    const M = { left, right: 14, top: 10, bottom: 42 };
    const W = width - M.left - M.right, H = height - M.top - M.bottom;
    const [x0, x1] = xDomain, [y0, y1] = yDomain;
    const x = (v) => M.left + ((v - x0) / (x1 - x0 || 1)) * W;
    const y = (v) => M.top + H - ((v - y0) / (y1 - y0 || 1)) * H;
    const root = svgEl("svg", { viewBox: `0 0 ${width} ${height}`, width, height, class: "plot", role: "img" });
    const axes = svgEl("g", { class: "axes" });
    for (const t of ticks(x0, x1)) {
      axes.append(svgEl("line", { class: "grid", x1: x(t), x2: x(t), y1: M.top, y2: M.top + H }),
                  svgEl("text", { x: x(t), y: M.top + H + 15, "text-anchor": "middle" }, num(t, 3)));
    }
    for (const t of ticks(y0, y1)) {
      axes.append(svgEl("line", { class: "grid", x1: M.left, x2: M.left + W, y1: y(t), y2: y(t) }),
                  svgEl("text", { x: M.left - 6, y: y(t) + 4, "text-anchor": "end" }, num(t, 3)));
    }
    axes.append(svgEl("rect", { class: "frame", x: M.left, y: M.top, width: W, height: H }),
                svgEl("text", { class: "axis-label", x: M.left + W / 2, y: height - 6, "text-anchor": "middle" },
                      xLabel),
                svgEl("text", { class: "axis-label", x: 12, y: M.top + H / 2, "text-anchor": "middle",
                                transform: `rotate(-90 12 ${M.top + H / 2})` }, yLabel));
    root.append(axes);
    return { root, x, y, M, W, H, xDomain, yDomain };
  }

  function legend(items) {
    return el("div", { class: "legend" }, items.map(({ label, colour }) => {
      const swatch = el("span", { class: "swatch" });
      swatch.style.background = colour;
      return el("span", { class: "legend-item" }, swatch, label);
    }));
  }

  // Curves or point clouds: series [{label, x, y, kind: "line" | "points" | "linepoints"}].
  // With `diagonal`, the line y = x (a perfect ROC's chance line, perfect calibration, perfect predictions).
  function seriesPlot(container, name, { series, xLabel, yLabel, xDomain, yDomain, diagonal = false }) {
    const f = frame({ xDomain: xDomain || extent(series.flatMap((s) => s.x)),
                      yDomain: yDomain || extent(series.flatMap((s) => s.y)), xLabel, yLabel });
    if (diagonal) {
      const lo = Math.max(f.xDomain[0], f.yDomain[0]), hi = Math.min(f.xDomain[1], f.yDomain[1]);
      f.root.append(svgEl("line", { class: "diagonal", x1: f.x(lo), y1: f.y(lo), x2: f.x(hi), y2: f.y(hi) }));
    }
    const shown = series.map((s, k) => {
      const colour = s.colour || COLOURS[k % COLOURS.length];
      const kind = s.kind || "line";
      const at = s.x.map((v, i) => [v, s.y[i]]).filter(([a, b]) => finite(a) && finite(b));
      const group = svgEl("g", { class: `series ${kind}`, "data-label": s.label, "data-points": at.length });
      if (kind !== "points" && at.length) {
        group.append(svgEl("path", { d: at.map(([a, b], i) => `${i ? "L" : "M"} ${f.x(a).toFixed(1)} ${f.y(b).toFixed(1)}`)
          .join(" "), stroke: colour, fill: "none" }));
      }
      if (kind !== "line") {
        for (const [i, [a, b]] of at.entries()) {
          const dot = svgEl("circle", { cx: f.x(a).toFixed(1), cy: f.y(b).toFixed(1), r: s.radius ? s.radius(i) : 2.6,
                                        fill: colour });
          if (s.tip) dot.append(svgEl("title", {}, s.tip(i)));
          group.append(dot);
        }
      }
      f.root.append(group);
      return { label: s.label, colour, points: at.length };
    });
    container.replaceChildren(f.root, legend(shown));
    dashboard.plots[name] = { series: shown.map(({ label, points }) => ({ label, points })) };
  }

  // Bars over bin edges: the residual histogram.
  function histogram(container, name, { edges, counts, xLabel }) {
    const top = Math.max(1, ...counts);
    const f = frame({ xDomain: [edges[0], edges[edges.length - 1]], yDomain: [0, top * 1.05], xLabel,
                      yLabel: "rows" });
    const bars = svgEl("g", { class: "bars" });
    counts.forEach((count, i) => {
      const x = f.x(edges[i]), w = Math.max(0.5, f.x(edges[i + 1]) - x - 1);
      const bar = svgEl("rect", { class: "hist-bar", x: x.toFixed(1), y: f.y(count).toFixed(1), width: w.toFixed(1),
                                  height: (f.y(0) - f.y(count)).toFixed(1), "data-count": count });
      bar.append(svgEl("title", {}, `${num(edges[i])} to ${num(edges[i + 1])}: ${count} rows`));
      bars.append(bar);
    });
    f.root.append(bars);
    if (edges[0] < 0 && edges[edges.length - 1] > 0) {
      f.root.append(svgEl("line", { class: "zero", x1: f.x(0), x2: f.x(0), y1: f.M.top, y2: f.M.top + f.H }));
    }
    container.replaceChildren(f.root);
    dashboard.plots[name] = { bins: counts.length, rows: counts.reduce((a, b) => a + b, 0) };
  }

  // Permutation importance: one horizontal bar per feature (the mean drop), a whisker of ± one std.
  function importanceBars(container, items, metric) {
    const rows = [...items].sort((a, b) => (b.mean ?? -Infinity) - (a.mean ?? -Infinity));
    const ROW = 24, LABEL = 150, width = 720;
    const height = 52 + rows.length * ROW;
    const lows = rows.map((r) => (r.mean ?? 0) - (r.std ?? 0)), highs = rows.map((r) => (r.mean ?? 0) + (r.std ?? 0));
    const lo = Math.min(0, ...lows), hi = Math.max(...highs, lo + 1e-9);
    const pad = (hi - lo) * 0.05;
    const xDomain = [lo < 0 ? lo - pad : 0, hi + pad];
    const M = { left: LABEL + 10, right: 60, top: 6 };
    const W = width - M.left - M.right;
    const x = (v) => M.left + ((v - xDomain[0]) / (xDomain[1] - xDomain[0])) * W;
    const root = svgEl("svg", { viewBox: `0 0 ${width} ${height}`, width, height, class: "plot importance",
                                role: "img" });
    const bottom = M.top + rows.length * ROW;
    for (const t of ticks(...xDomain)) {
      root.append(svgEl("line", { class: "grid", x1: x(t), x2: x(t), y1: M.top, y2: bottom }),
                  svgEl("text", { x: x(t), y: bottom + 15, "text-anchor": "middle" }, num(t, 3)));
    }
    root.append(svgEl("text", { class: "axis-label", x: M.left + W / 2, y: height - 6, "text-anchor": "middle" },
                      `drop in ${metric} when the column is shuffled`));
    rows.forEach((row, i) => {
      const mid = M.top + i * ROW + ROW / 2;
      const mean = row.mean ?? 0, std = row.std ?? 0;
      const label = row.feature.length > 22 ? `${row.feature.slice(0, 21)}…` : row.feature;
      const group = svgEl("g", { class: "bar-row", "data-feature": row.feature, "data-mean": row.mean });
      group.append(svgEl("title", {}, `${row.feature}: ${num(row.mean)} ± ${num(row.std)}`),
        svgEl("text", { x: LABEL, y: mid + 4, "text-anchor": "end", class: "feature" }, label),
        svgEl("rect", { class: `imp-bar${mean < 0 ? " negative" : ""}`, x: Math.min(x(0), x(mean)).toFixed(1),
                        y: mid - 7, width: Math.abs(x(mean) - x(0)).toFixed(1), height: 14 }),
        svgEl("line", { class: "whisker", x1: x(mean - std), x2: x(mean + std), y1: mid, y2: mid }),
        svgEl("line", { class: "whisker", x1: x(mean - std), x2: x(mean - std), y1: mid - 5, y2: mid + 5 }),
        svgEl("line", { class: "whisker", x1: x(mean + std), x2: x(mean + std), y1: mid - 5, y2: mid + 5 }),
        svgEl("text", { x: x(Math.max(mean + std, 0)) + 6, y: mid + 4, class: "value" }, num(row.mean, 3)));
      root.append(group);
    });
    root.append(svgEl("line", { class: "zero", x1: x(0), x2: x(0), y1: M.top, y2: bottom }));
    container.replaceChildren(root);
    dashboard.plots.importance = { bars: rows.map((r) => r.feature) };
  }

  // The confusion matrix as a table whose cells are shaded by their share of the row (the true class).
  function confusionHeatmap(container, { labels, matrix }) {
    const head = el("tr", {}, el("th", { class: "corner", text: "true \\ predicted" }),
                    labels.map((label) => el("th", { scope: "col", class: "predicted", text: label })));
    const rows = matrix.map((row, i) => {
      const total = row.reduce((a, b) => a + b, 0);
      return el("tr", {}, el("th", { scope: "row", class: "true", text: labels[i] }), row.map((count, j) => {
        const share = total ? count / total : 0;
        const cell = el("td", { class: `cell${i === j ? " hit" : ""}${share > 0.55 ? " dark" : ""}`, text: count,
                                "data-count": count, "data-true": labels[i], "data-predicted": labels[j],
                                title: `${count} of ${total} rows of ${labels[i]} predicted ${labels[j]}`
                                       + ` (${(100 * share).toFixed(1)}%)` });
        if (count) cell.style.backgroundColor = `rgba(37, 99, 235, ${(0.08 + 0.92 * share).toFixed(3)})`;
        return cell;
      }));
    });
    container.replaceChildren(el("table", { class: "heatmap" }, el("thead", {}, head), el("tbody", {}, rows)));
  }

  function chartCard(title, help, id, wide = false) {
    const box = el("div", { id, class: "plot-box" });
    $("#report-charts").append(el("section", { class: `card chart-card${wide ? " wide" : ""}` },
      el("h3", { text: title }), help ? el("p", { class: "muted", text: help }) : null, box));
    return box;
  }

  function table(headers, rows, attrs = {}) {
    return el("table", { class: "list", ...attrs }, el("thead", {}, el("tr", {}, headers.map((h) => el("th", { text: h })))),
      el("tbody", {}, rows.map((cells) => el("tr", {}, cells.map((c) => el("td", {}, c))))));
  }

  function renderReport(report, source) {
    $("#report-source").replaceChildren(...source);
    $("#report").hidden = false;
    body.dataset.report = report.task;
    const targets = report.targets || [];
    $("#report-metrics tbody").replaceChildren(...Object.entries(report.metrics || {}).map(([key, value]) =>
      el("tr", { "data-metric": key }, el("td", { text: key }), el("td", {
        text: Array.isArray(value) ? value.map((v, k) => `${targets[k] ?? k}: ${num(v)}`).join(", ") : num(value) }))));
    $("#report-charts").replaceChildren();
    dashboard.plots = {};
    if (report.task === "classification") {
      confusionHeatmap(chartCard("Confusion matrix", "Rows: the true class; columns: the predicted one. The shade is "
        + "the cell's share of its row, so the diagonal reads as each class's recall.", "confusion"),
      report.confusion_matrix);
      const curves = (report.roc && report.roc.curves) || [];
      seriesPlot(chartCard("ROC curve", curves.length > 1 ? "Each class against the rest; the dashed line is "
        + "chance." : `The positive class, ${curves[0] ? curves[0].label : ""}; the dashed line is chance.`, "roc"),
      "roc", { series: curves.map((c) => ({ label: `${c.label} (AUC ${num(c.auc, 3)})`, x: c.fpr, y: c.tpr })),
        xLabel: "false positive rate", yLabel: "true positive rate", xDomain: [0, 1], yDomain: [0, 1.0001],
        diagonal: true });
      const calibration = report.calibration || { bins: [] };
      const bins = calibration.bins.filter((b) => b.count > 0);
      const most = Math.max(1, ...bins.map((b) => b.count));
      seriesPlot(chartCard(`Reliability (ECE ${num(calibration.ece, 3)})`, "Per bin of the top class's probability: "
        + "the mean probability against the share predicted right (a dot's size: its rows). On the diagonal the "
        + "probabilities can be taken at their word; ECE is the rows-weighted mean gap.", "calibration"),
      "calibration", { series: [{ label: "bins", kind: "linepoints", x: bins.map((b) => b.confidence),
        y: bins.map((b) => b.accuracy), radius: (i) => 2.5 + 5 * Math.sqrt(bins[i].count / most),
        tip: (i) => `${num(bins[i].lower, 2)}–${num(bins[i].upper, 2)}: ${bins[i].count} rows, confidence `
          + `${num(bins[i].confidence, 3)}, accuracy ${num(bins[i].accuracy, 3)}` }],
        xLabel: "confidence (top-class probability)", yLabel: "accuracy", xDomain: [0, 1], yDomain: [0, 1.0001],
        diagonal: true });
      const pr = (report.pr && report.pr.curves) || [];
      if (pr.length) {
        seriesPlot(chartCard("Precision–recall", "Each curve with its average precision.", "pr"), "pr", {
          series: pr.map((c) => ({ label: `${c.label} (AP ${num(c.average_precision, 3)})`, x: c.recall,
                                   y: c.precision })),
          xLabel: "recall", yLabel: "precision", xDomain: [0, 1], yDomain: [0, 1.0001] });
      }
      chartCard("Per class", "", "per-class", true).append(table(["class", "precision", "recall", "F1", "support"],
        (report.per_class || []).map((c) => [c.label, num(c.precision), num(c.recall), num(c.f1), num(c.support)])));
    } else {
      for (const [k, series] of (report.predicted_vs_actual || []).entries()) {
        const both = extent([...series.actual, ...series.predicted]);
        seriesPlot(chartCard(`Predicted against actual: ${series.target}`, `${series.actual.length} rows (at most `
          + "500, a seeded sample); on the dashed line the prediction is right.", `pva-${k}`), `pva_${k}`, {
          series: [{ label: series.target, kind: "points", x: series.actual, y: series.predicted,
                     colour: COLOURS[k % COLOURS.length] }],
          xLabel: `actual ${series.target}`, yLabel: `predicted ${series.target}`, xDomain: both, yDomain: both,
          diagonal: true });
      }
      for (const [k, h] of (report.residual_histogram || []).entries()) {
        histogram(chartCard(`Residuals: ${h.target}`, "The prediction's error in the target's units, in bins.",
          `residuals-${k}`), `residuals_${k}`, { edges: h.edges, counts: h.counts, xLabel: `residual (${h.target})` });
      }
      const quantiles = ["0.05", "0.5", "0.95"];
      chartCard("Per target", "", "per-target", true).append(table(["target", "RMSE", "MAE", "R²",
        ...quantiles.map((q) => `residual q${q}`)], (report.per_target || []).map((t) => [t.target, num(t.rmse),
        num(t.mae), num(t.r2), ...quantiles.map((q) => num((t.residual_quantiles || {})[q]))])));
    }
    const importance = chartCard("Permutation importance", report.permutation_importance
      ? `The mean drop in ${report.importance_metric} over the shuffles of each feature column, with a whisker of `
        + "one standard deviation either side: a column whose shuffling costs nothing is one the model does not use."
      : "Not computed for this report (permutation_repeats 0).", "importance", true);
    if (report.permutation_importance) importanceBars(importance, report.permutation_importance, report.importance_metric);
  }

  // --- the model page's report and actions ---------------------------------------------------

  function rowsText(report) {
    const skipped = report.n_rows_without_target ? `, ${report.n_rows_without_target} without a target skipped` : "";
    return `${report.n_rows} rows scored${skipped}`;
  }

  function evaluationSource(evaluation) {
    const shuffles = evaluation.permutation_repeats
      ? `, ${evaluation.permutation_repeats} shuffles per feature column` : ", no permutation importance";
    return ["Evaluation ", el("code", { text: evaluation.id }), " of dataset ", el("code", { text: evaluation.dataset_id }),
            `, finished ${when(evaluation.finished_at)}: ${rowsText(evaluation.report)}${shuffles}.`];
  }

  function setReportStatus(status) {
    const badge = $("#report-status");
    badge.hidden = !status;
    badge.textContent = status || "";
    badge.className = `status ${status || ""}`;
  }

  function showProblem(box, error) {
    const problems = (error.document && error.document.errors) || [];
    box.hidden = false;
    box.replaceChildren(el("p", { class: "error", text: error.message || String(error) }),
      ...problems.map((p) => el("p", { class: "error", text: `${p.field}: ${p.message}` })));
  }

  // Read `path` every second until the job it names ends; `seen` gets each answer.
  async function untilEnded(path, seen) {
    for (;;) {
      const answer = await api(path);
      seen(answer);
      if (TERMINAL.includes(answer.status)) return answer;
      await sleep(1000);
    }
  }

  async function evaluation(id) {
    return api(`/v1/evaluations/${encodeURIComponent(id)}`);
  }

  // The newest succeeded evaluation's report, else the test split's; then follow a newer one still running.
  async function showLatestReport(model) {
    // Newest first, a page at a time until a succeeded one: failed or cancelled ones may fill a page.
    const path = `/v1/models/${encodeURIComponent(model.id)}/evaluations?limit=50`;
    let newest = null;
    let done = null;
    let cursor = null;
    do {
      const page = await api(cursor ? `${path}&cursor=${encodeURIComponent(cursor)}` : path);
      newest = newest || page.items[0] || null;
      done = page.items.find((e) => e.status === STATUS.SUCCEEDED) || null;
      cursor = done ? null : page.next_cursor;
    } while (cursor);
    const test = model.metrics && model.metrics.test;
    if (done) {
      const full = done.report ? done : await evaluation(done.id);
      renderReport(full.report, evaluationSource(full));
    } else if (test) {
      renderReport(test, [`The test split, held out of training (training.test_split) and scored when the model `
                          + `was made: ${rowsText(test)}.`]);
    } else {
      $("#report-source").textContent = "No report yet: the model was trained without a test split and has not "
        + "been evaluated. Pick a dataset below and press Evaluate.";
    }
    if (newest && !TERMINAL.includes(newest.status)) followEvaluation(newest.id).catch((error) => notice(error.message));
  }

  async function followEvaluation(id) {
    const status = $("#action-status");
    status.hidden = false;
    const line = (e) => status.replaceChildren(el("p", {}, "Evaluation ", el("code", { text: e.id }), " ",
                                                  statusBadge(e.status)));
    const ended = await untilEnded(`/v1/evaluations/${encodeURIComponent(id)}`, (e) => {
      line(e);
      setReportStatus(e.status);
    });
    setReportStatus(null);
    if (ended.status === STATUS.SUCCEEDED) {
      renderReport(ended.report, evaluationSource(ended));
      status.append(el("p", { class: "muted", text: "Its report is shown above." }));
    } else {
      status.append(el("p", { class: "error", text: ended.error || `the evaluation ended ${ended.status}` }));
    }
    return ended;
  }

  // Every item of a paged list.
  async function allItems(path) {
    const items = [];
    let cursor = null;
    do {
      const page = await api(`${path}?limit=1000${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`);
      items.push(...page.items);
      cursor = page.next_cursor;
    } while (cursor);
    return items;
  }

  function sizeText(bytes) {
    if (!finite(bytes)) return "";
    return bytes < 1024 ? `${bytes} B` : bytes < 1048576 ? `${(bytes / 1024).toFixed(1)} KiB`
                                                         : `${(bytes / 1048576).toFixed(1)} MiB`;
  }

  // A link to the batch prediction's file. Without a key the browser follows it; with one the page
  // fetches the file with the key (a link cannot send a header) and hands it over as a blob.
  function downloadLink(batch) {
    const href = batch.download;
    const name = `${batch.id}.${batch.format}`;
    const link = el("a", { id: "download", href, download: name, text: `Download ${name}` });
    link.addEventListener("click", async (event) => {
      if (!localStorage.getItem(KEY_STORAGE)) return;
      event.preventDefault();
      try {
        const response = await api(href, { raw: true });
        const url = URL.createObjectURL(await response.blob());
        const save = el("a", { href: url, download: name });
        document.body.append(save);
        save.click();
        save.remove();
        setTimeout(() => URL.revokeObjectURL(url), 60_000);
      } catch (error) {
        notice(error.message);
      }
    });
    return link;
  }

  async function modelActions(model) {
    const picker = $("#dataset-picker");
    const datasets = await allItems("/v1/datasets");
    picker.replaceChildren(...datasets.map((d) => el("option", { value: d.id,
      text: `${d.name} · ${d.n_rows} rows · ${d.id}${d.id === model.dataset_id ? " (trained on)" : ""}` })));
    if (!datasets.length) picker.append(el("option", { value: "", text: "No dataset: upload one first" }));
    $("#evaluate").disabled = $("#batch-predict").disabled = !datasets.length;

    $("#evaluate").addEventListener("click", async () => {
      const button = $("#evaluate");
      button.disabled = true;
      try {
        // An empty field leaves the server's default; anything else goes as typed (a 422 names a bad one).
        const shuffles = $("#shuffles").value.trim();
        const options = { dataset_id: picker.value };
        if (shuffles !== "") options.permutation_repeats = Number(shuffles);
        const created = await api(`/v1/models/${encodeURIComponent(model.id)}/evaluations`, {
          method: "POST", json: options });
        await followEvaluation(created.id);
      } catch (error) {
        showProblem($("#action-status"), error);
      } finally {
        button.disabled = false;
      }
    });

    $("#batch-predict").addEventListener("click", async () => {
      const button = $("#batch-predict");
      const out = $("#batch-result");
      button.disabled = true;
      out.hidden = false;
      try {
        const created = await api(`/v1/models/${encodeURIComponent(model.id)}/batch-predictions`, {
          method: "POST", json: { dataset_id: picker.value, format: $("#batch-format").value } });
        const line = (b) => out.replaceChildren(el("p", {}, "Batch prediction ", el("code", { text: b.id }), " ",
                                                   statusBadge(b.status)));
        const ended = await untilEnded(`/v1/batch-predictions/${encodeURIComponent(created.id)}`, line);
        if (ended.status === STATUS.SUCCEEDED) {
          out.append(el("p", {}, downloadLink(ended), el("span", { class: "muted",
            text: ` ${ended.n_rows} rows, ${sizeText(ended.size_bytes)}` })));
        } else {
          out.append(el("p", { class: "error", text: ended.error || `the batch prediction ended ${ended.status}` }));
        }
      } catch (error) {
        showProblem(out, error);
      } finally {
        button.disabled = false;
      }
    });
  }

  // --- compare jobs --------------------------------------------------------------------------

  // Loss or val_loss of each job, one uPlot series per job over the epochs any of them ran.
  function compareChart(name, container, jobs, histories, key) {
    const epochs = [...new Set(histories.flatMap((h) => h.epochs.map((r) => r.epoch)))].sort((a, b) => a - b);
    const data = [epochs, ...histories.map((h) => {
      const byEpoch = new Map(h.epochs.map((r) => [r.epoch, r[key]]));
      return epochs.map((epoch) => (finite(byEpoch.get(epoch)) ? byEpoch.get(epoch) : null));
    })];
    const target = $(container);
    target.replaceChildren();
    const plot = new uPlot({
      width: Math.max(300, target.clientWidth || 500), height: 260,
      scales: { x: { time: false } },
      axes: [{ label: "epoch" }, { label: key, size: 60 }],
      series: [{ label: "epoch" }, ...jobs.map((job, k) => ({
        label: job.id, stroke: COLOURS[k % COLOURS.length], width: 2, points: { size: 4 }, spanGaps: true,
        value: (u, v) => num(v) }))],
      legend: { live: true },
    }, data, target);
    dashboard.charts[name] = plot;
    target.dataset.points = String(epochs.length);
    target.dataset.series = jobs.map((job) => job.id).join(",");
  }

  // The table's rows: [section, field, value per job]; a section only when some job has a value in it.
  function compareRows(jobs, models) {
    const rows = [];
    const section = (title, objects) => {
      const keys = [];
      for (const object of objects) {
        for (const key of Object.keys(object || {})) if (!keys.includes(key)) keys.push(key);
      }
      for (const key of keys) rows.push([title, key, objects.map((o) => (o ? o[key] : undefined))]);
    };
    section("job", jobs.map((job) => ({ status: job.status, dataset: job.dataset_id,
      network: job.network_id || describeNetwork(job.network), features: (job.features || []).join(", ") || undefined,
      epochs_run: job.progress && job.progress.epoch })));
    section("training", jobs.map((job) => job.training));
    // Scalars and per-target lists: the test report has a section of its own.
    section("final", jobs.map((job) => Object.fromEntries(Object.entries(job.metrics || {})
      .filter(([, v]) => finite(v) || Array.isArray(v)))));
    const tests = jobs.map((job, k) => {
      const test = (models[k] && models[k].metrics && models[k].metrics.test) || (job.metrics && job.metrics.test);
      return test ? test.metrics : undefined;
    });
    if (tests.some(Boolean)) section("test", tests);
    return rows;
  }

  function cellText(value) {
    if (value === undefined) return "";
    if (Array.isArray(value)) return value.map((v) => num(v)).join(", ") || "none";
    if (value && typeof value === "object") return JSON.stringify(value);
    return num(value);
  }

  function compareTable(jobs, models) {
    const same = (a, b) => JSON.stringify(a ?? null) === JSON.stringify(b ?? null);
    $("#compare-table thead").replaceChildren(el("tr", {}, el("th", { text: "field" }), jobs.map((job, k) => {
      const swatch = el("span", { class: "swatch" });
      swatch.style.background = COLOURS[k % COLOURS.length];
      return el("th", { "data-job-id": job.id }, swatch, el("a", { href: `/ui/jobs/${encodeURIComponent(job.id)}` },
        el("code", { text: job.id })), k === 0 ? el("span", { class: "muted", text: " (reference)" }) : null);
    })));
    let current = null;
    const rows = [];
    for (const [title, field, values] of compareRows(jobs, models)) {
      if (title !== current) {
        current = title;
        rows.push(el("tr", { class: "section" }, el("th", { colspan: jobs.length + 1, text: title })));
      }
      rows.push(el("tr", { "data-field": `${title}.${field}` }, el("th", { text: field }), values.map((value, k) => {
        const differs = k > 0 && !same(value, values[0]);
        const cell = el("td", { class: differs ? "differs" : undefined, text: cellText(value) });
        // A number's difference from the reference, signed.
        if (differs && finite(value) && finite(values[0]) && title !== "job") {
          const delta = value - values[0];
          cell.append(el("span", { class: "delta", text: ` (${delta > 0 ? "+" : ""}${num(delta, 3)})` }));
        }
        return cell;
      })));
    }
    $("#compare-table tbody").replaceChildren(...rows);
  }

  function comparePage() {
    const ids = [...new Set((new URLSearchParams(location.search).get("jobs") || "").split(",")
      .map((id) => id.trim()).filter(Boolean))];
    const refuse = (message) => {
      const box = $("#compare-error");
      box.textContent = message;
      box.hidden = false;
      body.dataset.compareError = "true";
    };
    if (ids.length < COMPARE_LIMITS.min || ids.length > COMPARE_LIMITS.max) {
      refuse(`Compare takes ${COMPARE_LIMITS.min} to ${COMPARE_LIMITS.max} jobs; this link names ${ids.length}. `
             + "Tick the jobs in the jobs list and press Compare.");
      return Promise.resolve();
    }
    return guarded(async () => {
      let jobs;
      try {
        jobs = await Promise.all(ids.map((id) => api(`/v1/jobs/${encodeURIComponent(id)}`).catch((error) => {
          if (error instanceof Problem && error.status === 404) error.message = `No job ${id} (${error.message}).`;
          throw error;
        })));
      } catch (error) {
        if (error instanceof Problem && error.status === 404) return refuse(error.message);
        throw error;
      }
      const [histories, models] = await Promise.all([
        Promise.all(ids.map((id) => jobHistory(id))),
        Promise.all(jobs.map((job) => (job.model_id ? api(`/v1/models/${encodeURIComponent(job.model_id)}`)
          .catch(() => null) : null))),
      ]);
      $("#compare-jobs").replaceChildren(...jobs.map((job, k) => {
        const swatch = el("span", { class: "swatch" });
        swatch.style.background = COLOURS[k % COLOURS.length];
        return el("li", { "data-job-id": job.id }, swatch, el("a", { href: `/ui/jobs/${encodeURIComponent(job.id)}` },
          el("code", { text: job.id })), " ", statusBadge(job.status), ` on `, el("code", { text: job.dataset_id }),
          job.model_id ? [" → ", el("a", { href: `/ui/models/${encodeURIComponent(job.model_id)}` },
                                     el("code", { text: job.model_id }))] : null);
      }));
      $("#compare-charts").hidden = false;
      $("#compare-table-card").hidden = false;
      compareChart("compare_loss", "#compare-loss-chart", jobs, histories, "loss");
      compareChart("compare_val_loss", "#compare-val-loss-chart", jobs, histories, "val_loss");
      compareTable(jobs, models);
    });
  }

  // --- start -------------------------------------------------------------------------------

  setUpKeyForm();
  const pages = {
    jobs: () => jobsPage(),
    job: () => jobView(body.dataset.jobId),
    model: () => modelPage(body.dataset.modelId),
    compare: () => comparePage(),
  };
  const run = pages[body.dataset.page];
  if (run) {
    run().then(() => { body.dataset.ready = "true"; }, () => { body.dataset.ready = "error"; });
  }
})();
