// The page: the Make form, the list of jobs, the API-key prompt and the "server went away" banner.

import { ApiError, describe, getKey, request, setKey, Unreachable } from "./api.js";
import { JobBoard } from "./jobs.js";

const $ = (selector) => document.querySelector(selector);
const form = $("#make-form");
const fields = ["prompt", "model", "format", "duration", "temperature", "top_k", "top_p", "guidance_scale", "seed"];
const PAGE = 20;
let nextOffset = 0;
let defaultModel = null;

const board = new JobBoard($("#jobs"), $("#job-template"), {
  onReuse: reuse,
  onProblem: (problem) => handleProblem(problem),
});

// --- problems shown in plain words beside what caused them -----------------------------------

function setBanner(text, bad = false) {
  const banner = $("#banner");
  banner.hidden = !text;
  banner.textContent = text || "";
  banner.classList.toggle("bad", bad);
}

let watchingServer = false;
async function watchServerComesBack() {
  if (watchingServer) return;
  watchingServer = true;
  setBanner("The server is not answering. It may have stopped or restarted; retrying every few seconds…", true);
  for (;;) {
    await new Promise((resolve) => setTimeout(resolve, 3000));
    try {
      await request("GET", "/health");
      break;
    } catch {
      // still away
    }
  }
  watchingServer = false;
  setBanner("");
  await loadModels();
  await loadHistory(true);
}

function handleProblem(problem) {
  if (problem instanceof Unreachable) watchServerComesBack();
  else if (problem instanceof ApiError && problem.status === 401) askForKey(describe(problem));
}

function clearErrors() {
  $("#form-error").textContent = "";
  for (const name of fields) {
    const input = document.getElementById(name);
    input.removeAttribute("aria-invalid");
    const message = document.querySelector(`[data-error-for="${name}"]`);
    if (message) message.textContent = "";
  }
}

function showErrors(problem) {
  const text = describe(problem);
  let placed = false;
  if (problem instanceof ApiError) {
    for (const [name, message] of Object.entries(problem.fields)) {
      const slot = document.querySelector(`[data-error-for="${name}"]`);
      const input = document.getElementById(name);
      if (!slot || !input) continue;
      slot.textContent = message;
      input.setAttribute("aria-invalid", "true");
      if (name === "temperature" || name === "top_k" || name === "top_p" || name === "guidance_scale" || name === "seed") {
        $("#advanced").open = true;
      }
      if (!placed) input.focus();
      placed = true;
    }
  }
  $("#form-error").textContent = text;
}

// --- API key -------------------------------------------------------------------------------

function askForKey(reason) {
  const dialog = $("#key-dialog");
  $("#key-error").textContent = reason || "";
  $("#key-input").value = "";
  $("#key-button").hidden = false;
  if (!dialog.open) dialog.showModal();
}

$("#key-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const key = $("#key-input").value.trim();
  if (!key) return;
  setKey(key);
  try {
    await request("GET", "/jobs?limit=1");
  } catch (problem) {
    $("#key-error").textContent = problem instanceof ApiError && problem.status === 401
      ? "That key was not accepted. Check it and try again." : describe(problem);
    return;
  }
  $("#key-dialog").close();
  await loadModels();
  await loadHistory(true);
});

$("#key-forget").addEventListener("click", () => {
  setKey("");
  $("#key-input").value = "";
  $("#key-error").textContent = "Key forgotten.";
});
$("#key-button").addEventListener("click", () => askForKey(getKey() ? "Replace the saved key." : ""));

// --- models and limits ---------------------------------------------------------------------

function modelLabel(model) {
  let label = model.name;
  if (model.trained === false) label += " (untrained: noise)";
  else if (model.downloaded === false && !model.loaded) label += " (not downloaded yet)";
  return label;
}

async function loadModels() {
  let info;
  try {
    info = await request("GET", "/models");
  } catch (problem) {
    handleProblem(problem);
    return;
  }
  defaultModel = info.default_model || info.default || null;
  const select = $("#model");
  const chosen = select.value || defaultModel;
  select.replaceChildren();
  const models = info.models || info.available || [];
  for (const model of models) {
    const option = document.createElement("option");
    option.value = model.name;
    option.textContent = modelLabel(model);
    option.dataset.trained = String(model.trained !== false);
    select.append(option);
  }
  if (chosen && models.some((m) => m.name === chosen)) select.value = chosen;
  describeModel();
  const limits = info.limits || {};
  const max = Number(limits.max_duration || 30);
  const slider = $("#duration");
  slider.max = String(Math.floor(max));
  if (Number(slider.value) > max) slider.value = String(Math.floor(max));
  showDuration();
  const formats = (info.formats || []).map((f) => f.name || f);
  if (formats.length) {
    for (const option of [...$("#format").options]) option.hidden = !formats.includes(option.value);
  }
}

function describeModel() {
  const option = $("#model").selectedOptions[0];
  $("#model-note").textContent = option && option.dataset.trained === "false"
    ? "This model is untrained: it makes noise, for testing the service." : "";
}

$("#model").addEventListener("change", describeModel);

// --- the form ------------------------------------------------------------------------------

function showDuration() {
  $("#duration-value").textContent = `${$("#duration").value} s`;
}
$("#duration").addEventListener("input", showDuration);

for (const chip of document.querySelectorAll(".chip")) {
  chip.addEventListener("click", () => {
    $("#prompt").value = chip.textContent;
    $("#prompt").focus();
  });
}

$("#dice").addEventListener("click", () => {
  $("#seed").value = String(Math.floor(Math.random() * 2 ** 31));
  $("#seed-lock").checked = true;
});

$("#prompt").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    form.requestSubmit();
  }
});

function numberOf(id) {
  const text = document.getElementById(id).value.trim();
  return text === "" ? undefined : Number(text);
}

function collect() {
  const body = {
    prompt: $("#prompt").value,
    duration: numberOf("duration"),
    model: $("#model").value || undefined,
    format: $("#format").value,
    temperature: numberOf("temperature"),
    top_k: numberOf("top_k"),
    top_p: numberOf("top_p"),
    guidance_scale: numberOf("guidance_scale"),
  };
  if ($("#seed-lock").checked && numberOf("seed") !== undefined) body.seed = numberOf("seed");
  return Object.fromEntries(Object.entries(body).filter(([, value]) => value !== undefined));
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  clearErrors();
  const body = collect();
  const button = $("#generate");
  button.disabled = true;
  try {
    const created = await request("POST", "/generate", body);
    board.add({ ...body, ...created, progress: 0 });
    $("#jobs-empty").hidden = true;
    if (!$("#seed-lock").checked) $("#seed").value = "";
  } catch (problem) {
    showErrors(problem);
    handleProblem(problem);
  } finally {
    button.disabled = false;
  }
});

function reuse(job) {
  $("#prompt").value = job.prompt;
  if ([...$("#model").options].some((o) => o.value === job.model)) $("#model").value = job.model;
  if (job.format) $("#format").value = job.format;
  if (job.duration != null) $("#duration").value = String(Math.round(job.duration));
  showDuration();
  describeModel();
  for (const name of ["temperature", "top_k", "top_p", "guidance_scale"]) {
    if (job.settings[name] != null) document.getElementById(name).value = String(job.settings[name]);
  }
  if (job.seed != null) {
    $("#seed").value = String(job.seed);
    $("#seed-lock").checked = true;
  }
  $("#advanced").open = true;
  $("#prompt").focus();
  window.scrollTo({ top: 0, behavior: "smooth" });
}

// --- history -------------------------------------------------------------------------------

async function loadHistory(reset = false) {
  if (reset) {
    board.clear();
    nextOffset = 0;
  }
  let page;
  try {
    page = await request("GET", `/jobs?limit=${PAGE}&offset=${nextOffset}`);
  } catch (problem) {
    handleProblem(problem);
    return;
  }
  const jobs = Array.isArray(page) ? page : page.jobs || page.items || [];
  board.showHistory(jobs);
  nextOffset += jobs.length;
  const total = page.total;
  $("#more").hidden = total != null ? nextOffset >= total : jobs.length < PAGE;
  $("#jobs-empty").hidden = board.size > 0;
}

$("#more").addEventListener("click", () => loadHistory(false));
$("#refresh").addEventListener("click", () => loadHistory(true));

await loadModels();
await loadHistory(true);
document.body.dataset.ready = "true";
