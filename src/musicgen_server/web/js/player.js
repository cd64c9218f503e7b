// A player for one finished clip: the browser's <audio> element for playing and seeking, and a
// waveform drawn from the decoded samples that seeks where it is clicked.

import { fetchBytes, needsKeyForAudio } from "./api.js";

let audioContext = null;

function context() {
  const Context = window.AudioContext || window.webkitAudioContext;
  if (!audioContext && Context) audioContext = new Context();
  return audioContext;
}

/** Min and max of each pixel column, so a long clip still draws in one pass. */
export function envelope(samples, columns) {
  const mins = new Float32Array(columns);
  const maxs = new Float32Array(columns);
  const per = Math.max(1, Math.floor(samples.length / columns));
  for (let column = 0; column < columns; column++) {
    let low = 1, high = -1;
    const start = column * per;
    const stop = Math.min(samples.length, start + per);
    for (let i = start; i < stop; i++) {
      const value = samples[i];
      if (value < low) low = value;
      if (value > high) high = value;
    }
    mins[column] = stop > start ? low : 0;
    maxs[column] = stop > start ? high : 0;
  }
  return { mins, maxs };
}

function draw(canvas, shape, played) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 300;
  const height = canvas.clientHeight || 64;
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(height * ratio);
  const g = canvas.getContext("2d");
  g.scale(ratio, ratio);
  g.clearRect(0, 0, width, height);
  const middle = height / 2;
  const columns = shape.mins.length;
  // Scaled to the clip's own peak, so a quiet clip still shows its shape.
  const peak = Math.max(1e-6, ...shape.maxs, ...shape.mins.map((v) => -v));
  const scale = (0.95 * middle) / peak;
  for (let x = 0; x < columns; x++) {
    g.fillStyle = x / columns <= played ? "#1f4fd1" : "#7c8497";
    const top = middle - shape.maxs[x] * scale;
    const bottom = middle - shape.mins[x] * scale;
    g.fillRect(x * (width / columns), top, Math.max(1, width / columns - 0.5), Math.max(1, bottom - top));
  }
}

/** Wire a card's <audio> and <canvas> to the clip at `url`. Returns when the waveform is drawn. */
export async function attachPlayer(audio, canvas, url, download) {
  let bytes = null;
  if (needsKeyForAudio()) {
    // <audio src> cannot send the key: play from the fetched bytes instead.
    bytes = await fetchBytes(url);
    const blobUrl = URL.createObjectURL(new Blob([bytes], { type: mediaType(url) }));
    audio.src = blobUrl;
    if (download) download.href = blobUrl;
  } else {
    audio.src = url; // streamed with HTTP Range, so seeking does not wait for the whole file
    if (download) download.href = url;
    bytes = await fetchBytes(url);
  }
  const ctx = context();
  if (!ctx) return;
  const decoded = await ctx.decodeAudioData(bytes.slice(0));
  const shape = envelope(decoded.getChannelData(0), 400);
  const redraw = () => draw(canvas, shape, audio.duration ? audio.currentTime / audio.duration : 0);
  redraw();
  canvas.dataset.drawn = "true";
  audio.addEventListener("timeupdate", redraw);
  audio.addEventListener("seeked", redraw);
  window.addEventListener("resize", redraw);
  canvas.addEventListener("click", (event) => {
    if (!audio.duration) return;
    const box = canvas.getBoundingClientRect();
    audio.currentTime = ((event.clientX - box.left) / box.width) * audio.duration;
  });
}

function mediaType(url) {
  const ext = url.split(".").pop().toLowerCase();
  return { wav: "audio/wav", mp3: "audio/mpeg", ogg: "audio/ogg", flac: "audio/flac" }[ext] || "application/octet-stream";
}
