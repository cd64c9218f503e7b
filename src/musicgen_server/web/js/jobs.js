// The list of jobs: history from the server, live state from each job's event stream, and the
// actions a person takes on a take (cancel, listen, download, reuse, delete).

import { describe, events, request, Unreachable } from "./api.js";
import { attachPlayer } from "./player.js";

const ACTIVE = new Set(["queued", "running"]);
const FINISHED = new Set(["completed", "failed", "cancelled", "expired"]);

/** One shape for a job, whichever endpoint it came from. */
export function normalize(raw) {
  const params = raw.params || raw.parameters || {};
  const pick = (name) => (raw[name] !== undefined ? raw[name] : params[name]);
  return {
    id: raw.job_id || raw.id,
    status: raw.expired ? "expired" : raw.status,
    progress: Number(raw.progress || 0),
    queuePosition: raw.queue_position,
    eta: raw.eta_seconds,
    audioUrl: raw.audio_url || null,
    error: raw.error || null,
    seed: pick("seed"),
    prompt: pick("prompt") || "",
    model: pick("model") || "",
    duration: pick("duration"),
    format: pick("format") || "wav",
    settings: {
      temperature: pick("temperature"),
      top_k: pick("top_k"),
      top_p: pick("top_p"),
      guidance_scale: pick("guidance_scale"),
      normalize: pick("normalize"),
    },
    createdAt: raw.created_at || null,
  };
}

function formatEta(seconds) {
  if (!Number.isFinite(seconds) || seconds < 0) return "";
  if (seconds < 60) return `${Math.ceil(seconds)} s left`;
  return `${Math.floor(seconds / 60)} min ${Math.ceil(seconds % 60)} s left`;
}

export class JobBoard {
  constructor(list, template, { onReuse, onProblem }) {
    this.list = list;
    this.template = template;
    this.onReuse = onReuse;
    this.onProblem = onProblem;
    this.cards = new Map(); // id -> {element, job, watcher, playerFor}
  }

  get size() {
    return this.cards.size;
  }

  /** Jobs from GET /jobs, newest first, appended below what is shown. */
  showHistory(jobs) {
    for (const raw of jobs) {
      const job = normalize(raw);
      if (this.cards.has(job.id)) this.update(job);
      else this.insert(job, "end");
    }
  }

  /** A job just submitted: at the top, followed live. */
  add(raw) {
    const job = normalize(raw);
    this.insert(job, "start");
    return job;
  }

  insert(job, where) {
    const element = this.template.content.firstElementChild.cloneNode(true);
    element.dataset.jobId = job.id;
    const entry = { element, job, watcher: null, playerFor: null };
    this.cards.set(job.id, entry);
    if (where === "start") this.list.prepend(element);
    else this.list.append(element);
    element.querySelector('[data-action="cancel"]').addEventListener("click", () => this.cancel(job.id));
    element.querySelector('[data-action="delete"]').addEventListener("click", () => this.remove(job.id));
    element.querySelector('[data-action="reuse"]').addEventListener("click", () => this.onReuse(entry.job));
    this.render(entry);
    if (ACTIVE.has(job.status)) this.follow(job.id);
  }

  update(job) {
    const entry = this.cards.get(job.id);
    if (!entry) return;
    entry.job = { ...entry.job, ...Object.fromEntries(Object.entries(job).filter(([, v]) => v !== undefined && v !== "")) };
    this.render(entry);
  }

  render(entry) {
    const { element, job } = entry;
    element.dataset.status = job.status;
    element.querySelector(".job-prompt").textContent = job.prompt || "(no prompt)";
    const badge = element.querySelector("[data-status]");
    badge.dataset.status = job.status;
    badge.textContent = job.status === "queued" && job.queuePosition != null
      ? `queued, #${job.queuePosition} in line` : job.status;
    const meta = [job.model, job.duration != null ? `${job.duration} s` : "", job.format,
      job.seed != null ? `seed ${job.seed}` : ""].filter(Boolean);
    element.querySelector(".job-meta").textContent = meta.join(" · ");

    const progress = element.querySelector(".job-progress");
    const running = job.status === "running";
    progress.hidden = !ACTIVE.has(job.status);
    if (ACTIVE.has(job.status)) {
      const percent = Math.round(job.progress * 100);
      progress.querySelector("progress").value = percent;
      progress.querySelector("progress").setAttribute("aria-label", `Progress of “${job.prompt}”`);
      let text = running ? `${percent}%` : "waiting";
      if (running && job.eta != null) text += ` · ${formatEta(job.eta)}`;
      progress.querySelector(".job-percent").textContent = text;
    }

    const error = element.querySelector(".job-error");
    const message = job.status === "failed" ? job.error || "Generation failed."
      : job.status === "expired" ? "This audio has expired and was deleted from the server." : "";
    error.hidden = !message;
    error.textContent = message;

    element.querySelector('[data-action="cancel"]').hidden = !ACTIVE.has(job.status);
    element.querySelector('[data-action="delete"]').hidden = !FINISHED.has(job.status);
    const download = element.querySelector('[data-action="download"]');
    const player = element.querySelector(".job-player");
    const playable = job.status === "completed" && job.audioUrl;
    download.hidden = !playable;
    player.hidden = !playable;
    if (playable && entry.playerFor !== job.audioUrl) {
      entry.playerFor = job.audioUrl;
      download.setAttribute("download", `${(job.prompt || "music").slice(0, 40).replace(/[^\w-]+/g, "-")}-${job.seed}.${job.format}`);
      download.textContent = `Download ${job.format.toUpperCase()}`;
      attachPlayer(player.querySelector("audio"), player.querySelector("canvas"), job.audioUrl, download)
        .catch((problem) => this.onProblem(problem, entry.job));
    }
  }

  /** Live updates from the job's event stream; polling /status if the stream breaks. */
  async follow(id) {
    const entry = this.cards.get(id);
    if (!entry || entry.watcher) return;
    const controller = new AbortController();
    entry.watcher = controller;
    try {
      for await (const message of events(`/jobs/${id}/events`, controller.signal)) {
        if (message.data && typeof message.data === "object") this.update(normalize({ job_id: id, ...message.data }));
        if (FINISHED.has(this.cards.get(id)?.job.status)) break;
      }
    } catch (problem) {
      if (problem.name === "AbortError") return;
      if (problem instanceof Unreachable) this.onProblem(problem, entry.job);
    } finally {
      controller.abort();
      if (this.cards.get(id)) this.cards.get(id).watcher = null;
    }
    await this.poll(id);
  }

  async poll(id) {
    while (this.cards.has(id) && ACTIVE.has(this.cards.get(id).job.status)) {
      try {
        this.update(normalize(await request("GET", `/status/${id}`)));
      } catch (problem) {
        this.onProblem(problem, this.cards.get(id)?.job);
      }
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  }

  async cancel(id) {
    try {
      await request("DELETE", `/jobs/${id}`);
      this.update({ id, status: "cancelled", progress: this.cards.get(id).job.progress });
    } catch (problem) {
      this.showCardError(id, describe(problem));
    }
  }

  async remove(id) {
    try {
      await request("DELETE", `/jobs/${id}`);
    } catch (problem) {
      if (!(problem.status === 404)) {
        this.showCardError(id, describe(problem));
        return;
      }
    }
    const entry = this.cards.get(id);
    if (!entry) return;
    if (entry.watcher) entry.watcher.abort();
    entry.element.remove();
    this.cards.delete(id);
  }

  showCardError(id, text) {
    const entry = this.cards.get(id);
    if (!entry) return;
    const error = entry.element.querySelector(".job-error");
    error.hidden = false;
    error.textContent = text;
  }

  clear() {
    for (const entry of this.cards.values()) if (entry.watcher) entry.watcher.abort();
    this.cards.clear();
    this.list.replaceChildren();
  }
}
