// The API reference page (docs.html): renders /openapi.json.
"use strict";
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return node;
}
function refName(schema) { return schema && schema.$ref ? schema.$ref.split("/").pop() : null; }
function typeOf(schema) {
  if (!schema) return "";
  if (schema.$ref) return refName(schema);
  if (schema.enum) return schema.enum.map(v => JSON.stringify(v)).join(" | ");
  if (schema.const !== undefined) return JSON.stringify(schema.const);
  if (schema.anyOf) return schema.anyOf.map(typeOf).join(" | ");
  if (schema.type === "array") return typeOf(schema.items || {}) + "[]";
  return schema.type || "any";
}
function bounds(schema) {
  const parts = [];
  for (const [key, label] of [["minimum", "≥"], ["exclusiveMinimum", ">"], ["maximum", "≤"], ["exclusiveMaximum", "<"], ["minLength", "min length"]]) {
    if (schema[key] !== undefined) parts.push(label + " " + schema[key]);
  }
  for (const alt of schema.anyOf || []) { const inner = bounds(alt); if (inner) parts.push(inner); }
  return parts.join(", ");
}
function schemaTable(schema) {
  const props = schema.properties || {};
  const required = new Set(schema.required || []);
  const table = el("table", {}, el("tr", {}, el("th", {}, "field"), el("th", {}, "type"), el("th", {}, "default / bounds"), el("th", {}, "description")));
  for (const [name, prop] of Object.entries(props)) {
    const dflt = prop.default !== undefined ? "default " + JSON.stringify(prop.default) : (required.has(name) ? "required" : "");
    table.append(el("tr", {}, el("td", {}, el("code", {}, name)), el("td", {}, typeOf(prop)),
      el("td", {}, [dflt, bounds(prop)].filter(Boolean).join("; ")), el("td", {}, prop.description || "")));
  }
  return table;
}
async function main() {
  const spec = await (await fetch("openapi.json")).json();
  const ops = document.getElementById("ops");
  ops.textContent = "";
  for (const [path, methods] of Object.entries(spec.paths)) {
    for (const [method, op] of Object.entries(methods)) {
      const body = el("div", {class: "body"});
      if (op.parameters && op.parameters.length) {
        const table = el("table", {}, el("tr", {}, el("th", {}, "parameter"), el("th", {}, "in"), el("th", {}, "type"), el("th", {}, "description")));
        for (const p of op.parameters) table.append(el("tr", {}, el("td", {}, el("code", {}, p.name)), el("td", {}, p.in), el("td", {}, typeOf(p.schema)), el("td", {}, p.description || "")));
        body.append(table);
      }
      if (op.requestBody) {
        for (const [type, media] of Object.entries(op.requestBody.content)) {
          const name = refName(media.schema);
          body.append(el("p", {}, "Body (", el("code", {}, type), "): ", name ? el("a", {href: "#schema-" + name}, name) : typeOf(media.schema)));
        }
      }
      const codes = Object.entries(op.responses).map(([code, r]) => code + ": " + r.description).join(" · ");
      body.append(el("p", {class: "muted"}, codes));
      ops.append(el("details", {class: "op"}, el("summary", {}, el("span", {class: "method " + method}, method), " ", el("span", {class: "path"}, path), " — ", op.summary || ""), body));
    }
  }
  const schemas = document.getElementById("schemas");
  for (const [name, schema] of Object.entries(spec.components.schemas)) {
    schemas.append(el("h3", {id: "schema-" + name}, name));
    if (schema.description) schemas.append(el("p", {}, schema.description));
    schemas.append(schemaTable(schema));
  }
}
main().catch(err => { document.getElementById("ops").textContent = "Could not load openapi.json: " + err; });
