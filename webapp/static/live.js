// Live mode and Read aloud (webapp/live_panel.py). Live: the camera's picture, shrunk here to at
// most data-side pixels, goes to the server one frame at a time (the next only once the last is
// answered, at most one every data-every ms), and each answer is shown in the caption area.
// Every caption the caption area shows, live or uploaded, is copied into the aria-live region
// (screen readers announce it) and, with Read aloud on, spoken once: never twice in a row.
const root = element.querySelector('.live');
const side = Number(root.dataset.side) || 416, every = Number(root.dataset.every) || 250;
const liveButton = root.querySelector('.live-toggle'), speakButton = root.querySelector('.speak-toggle');
const video = root.querySelector('video'), said = root.querySelector('.live-said');
const state = root.querySelector('.live-state'), idle = state.textContent;
const canvas = document.createElement('canvas');
const stats = window.captionerLive = {frames: 0, bytes: 0, answers: {}, started: null, running: false};
let camera = null, streamId = null, lastSaid = '', lastSpoken = null;

const sleep = ms => new Promise(done => setTimeout(done, ms));
const captionArea = () => document.querySelector('#caption-output');

function shownText() {
  const area = captionArea();
  if (!area) return {text: '', caption: false};
  const captions = [...area.querySelectorAll('.caption')].map(e => e.textContent.trim()).filter(Boolean);
  if (captions.length) return {text: captions.join(' '), caption: true};
  const notes = [...area.querySelectorAll('.note, .err')].map(e => e.textContent.trim()).filter(Boolean);
  return {text: notes.join(' '), caption: false};
}

function speak(text) {
  if (!('speechSynthesis' in window) || !text || text === lastSpoken) return;
  lastSpoken = text;
  window.speechSynthesis.cancel();  // a newer caption: the older one is no longer what is there
  const utterance = new SpeechSynthesisUtterance(text);
  utterance.lang = 'en-US';
  window.speechSynthesis.speak(utterance);
}

function announce() {
  const {text, caption} = shownText();
  if (!text || text === lastSaid) return;
  lastSaid = text;
  said.textContent = text;
  if (caption && speakButton.getAttribute('aria-pressed') === 'true') speak(text);
}
new MutationObserver(announce).observe(document.body, {childList: true, subtree: true, characterData: true});

function show(markup) {
  const area = captionArea();
  if (!area || !markup) return;
  const old = area.querySelector('.captions');
  if (old) { old.outerHTML = markup; return; }
  const holder = area.querySelector('.prose') || area.querySelector('div') || area;
  holder.insertAdjacentHTML('beforeend', markup);
}

function frame() {
  const w = video.videoWidth, h = video.videoHeight;
  if (!w || !h || video.readyState < 2) return null;
  const scale = Math.min(1, side / Math.max(w, h));
  canvas.width = Math.max(1, Math.round(w * scale));
  canvas.height = Math.max(1, Math.round(h * scale));
  canvas.getContext('2d').drawImage(video, 0, 0, canvas.width, canvas.height);
  return canvas.toDataURL('image/jpeg', 0.7);
}

async function run(id) {
  while (streamId === id) {
    const began = performance.now();
    const image = frame();
    if (image) {
      stats.frames += 1;
      stats.bytes += image.length;
      let answer = null;
      try { answer = await server.live_frame({stream: id, image}); } catch (e) { await sleep(1000); }
      if (streamId !== id) return;
      if (answer) {
        stats.answers[answer.kind] = (stats.answers[answer.kind] || 0) + 1;
        show(answer.html);
        if (answer.kind === 'ended') { stop(false, answer.message); return; }
      }
    }
    await sleep(Math.max(0, every - (performance.now() - began)));
  }
}

async function start() {
  try {  // on a phone, the camera on the back: what is in front of the person
    camera = await navigator.mediaDevices.getUserMedia(
      {video: {facingMode: {ideal: 'environment'}, width: {ideal: 640}, height: {ideal: 480}}, audio: false});
  } catch (e) {
    state.textContent = 'No camera could be opened.';
    return;
  }
  video.srcObject = camera;
  video.hidden = false;
  streamId = Math.random().toString(36).slice(2) + Date.now().toString(36);
  liveButton.setAttribute('aria-pressed', 'true');
  state.textContent = 'Live: captioning what the camera sees.';
  Object.assign(stats, {frames: 0, bytes: 0, answers: {}, started: performance.now(), running: true});
  run(streamId);
}

function stop(tell = true, message = null) {
  const id = streamId;
  streamId = null;
  if (camera) camera.getTracks().forEach(t => t.stop());
  camera = null;
  video.srcObject = null;
  video.hidden = true;
  liveButton.setAttribute('aria-pressed', 'false');
  state.textContent = message || idle;
  stats.running = false;
  if (tell && id) server.live_stop(id).catch(() => {});
}

liveButton.addEventListener('click', () => (streamId ? stop() : start()));
speakButton.addEventListener('click', () => {
  const on = speakButton.getAttribute('aria-pressed') !== 'true';
  speakButton.setAttribute('aria-pressed', String(on));
  if (on) { const {text, caption} = shownText(); if (caption) speak(text); }
  else if ('speechSynthesis' in window) window.speechSynthesis.cancel();
});
window.addEventListener('pagehide', () => stop());
