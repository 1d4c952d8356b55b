// The inspector page: calls this origin's API with the key typed in (kept in
// sessionStorage, so it is forgotten when the tab closes). No external resources.
"use strict";

const KEY = "cites-risk-key";
const $ = (id) => document.getElementById(id);

function key() {
  return $("api-key").value.trim();
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
}

async function call(method, path, body) {
  $("error").hidden = true;
  if (!key()) {
    showError("Type your API key first.");
    return null;
  }
  const init = { method, headers: { Authorization: "Bearer " + key() } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const fields = (data.errors || [])
      .map((e) => (e.field ? e.field + ": " : "") + e.message)
      .join("; ");
    showError((data.detail || response.statusText) + (fields ? " — " + fields : ""));
    return null;
  }
  return data;
}

function show(result) {
  if (!result) return;
  $("result").hidden = false;
  $("result-id").textContent = result.declaration_id;
  const lane = $("result-lane");
  lane.textContent = result.lane;
  lane.className = "lane " + result.lane;
  $("result-score").textContent = result.score.toFixed(3);
  $("result-risk").textContent = result.final_risk.toFixed(3);
  $("result-species").textContent = result.species_match || "no CITES species matched";
  const list = $("result-reasons");
  list.replaceChildren(
    ...result.reasons.map((text) => {
      const item = document.createElement("li");
      item.textContent = text; // text, never HTML: reasons quote declared values
      return item;
    })
  );
  $("result-model").textContent = result.model_version;
  $("result-at").textContent = result.scored_at;
}

function formDeclaration(form) {
  const out = {};
  for (const [name, value] of new FormData(form).entries()) {
    const text = String(value).trim();
    if (!text) continue;
    if (name === "quantity") out[name] = Number(text);
    else if (name === "declared_at") out[name] = text.length === 16 ? text + ":00Z" : text;
    else out[name] = text;
  }
  return out;
}

document.addEventListener("DOMContentLoaded", () => {
  $("api-key").value = sessionStorage.getItem(KEY) || "";
  $("api-key").addEventListener("input", () => sessionStorage.setItem(KEY, key()));
  $("forget-key").addEventListener("click", () => {
    sessionStorage.removeItem(KEY);
    $("api-key").value = "";
  });
  $("lookup-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const id = $("lookup-id").value.trim();
    show(await call("GET", "/v1/scores/" + encodeURIComponent(id)));
  });
  $("declaration-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    show(await call("POST", "/v1/score", formDeclaration(event.target)));
  });
  $("score-json").addEventListener("click", async () => {
    let declaration;
    try {
      declaration = JSON.parse($("declaration-json").value);
    } catch (err) {
      showError("The JSON does not parse: " + err.message);
      return;
    }
    show(await call("POST", "/v1/score", declaration));
  });
});
