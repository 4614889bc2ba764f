// The review page: one key press labels an image and shows the next, which was fetched and decoded
// while the person looked at this one. Keys: 1..N a class (in the model's order), s skip,
// x not a valid image, u undo. A label is sent in the background; the server keeps an image queued
// until its label is written, so a failed send loses nothing (the message says what happened, and
// "Start over" at the end of the queue comes back to it).
// Each swap's time from key press to the next animation frame is kept in <body data-swap-ms>.
"use strict";

const TOKEN_KEY = "transferkit.review.token"; // sessionStorage: gone with the tab
const WHO_KEY = "transferkit.review.who"; // localStorage: the name is no secret
const $ = (id) => document.getElementById(id);

let classes = [];
let invalid = "not a valid image";
let current = null; // the shown item
let upcoming = null; // a promise of {item, left, image, overlay}: the item after `current`, decoded
let left = 0;
const labelled = []; // ids labelled on this page, newest last: what u takes back

async function api(path, body) {
  const options = { headers: { authorization: `Bearer ${sessionStorage.getItem(TOKEN_KEY)}` } };
  if (body !== undefined) {
    options.method = "POST";
    options.headers["content-type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  const answer = await response.json().catch(() => ({ error: response.statusText }));
  if (!response.ok) {
    const error = new Error(answer.error || response.statusText);
    error.status = response.status;
    throw error;
  }
  return answer;
}

function say(text, info = false) {
  const message = $("message");
  message.textContent = text;
  message.className = info ? "info" : "";
  message.hidden = !text;
}

async function decoded(url) {
  if (!url) return null;
  const image = new Image();
  image.src = url;
  await image.decode();
  return image;
}

// The item after `after` (null: the oldest), its images decoded before it is shown.
async function fetchNext(after) {
  const query = after ? `?after=${encodeURIComponent(after)}` : "";
  const answer = await api(`/v1/review/next${query}`);
  const item = answer.item;
  const [image, overlay] = item ? await Promise.all([decoded(item.image), decoded(item.overlay)]) : [null, null];
  return { item, left: answer.left, image, overlay };
}

function swapImage(id, fresh, alt) {
  const old = $(id);
  const image = fresh ?? new Image();
  image.id = id;
  image.alt = alt;
  old.replaceWith(image);
}

function setLeft(count) {
  left = Math.max(0, count);
  $("left").textContent = `${left} left`;
}

function show(next, pressed) {
  current = next.item;
  if (!current) {
    $("desk").hidden = true;
    $("done").hidden = false;
    $("done-text").textContent = left
      ? `Nothing after this one: ${left} skipped image(s) still wait.`
      : "The review queue is empty.";
    document.body.dataset.item = "";
  } else {
    $("done").hidden = true;
    $("desk").hidden = false;
    swapImage("image", next.image, "the image as sent");
    swapImage("overlay", next.overlay, "where the model saw the evidence");
    $("overlay-caption").textContent = current.overlay ? "heatmap" : "no heatmap: this model has no heatmap output";
    $("decision").textContent = current.decision ?? "no decision";
    $("reason").textContent = current.reason ? `(${current.reason})` : "";
    const rows = Object.entries(current.probabilities ?? {}).map(
      ([name, p]) => `<tr><td>${escapeHtml(name)}</td><td>${(100 * p).toFixed(1)} %</td></tr>`,
    );
    $("probabilities").innerHTML = rows.join("");
    const ood = current.ood_score == null ? "" : `ood_score ${current.ood_score.toFixed(3)} · `;
    $("details").textContent = `${ood}model ${current.model_version ?? "?"} · queued ${current.time ?? "?"}`;
    document.body.dataset.item = current.id;
  }
  if (pressed !== undefined) {
    requestAnimationFrame(() => {
      document.body.dataset.swapMs = (performance.now() - pressed).toFixed(1);
      document.body.dataset.swaps = String(Number(document.body.dataset.swaps ?? 0) + 1);
    });
  }
  upcoming = current ? fetchNext(current.id) : null;
  const after = current?.id;
  upcoming?.then(
    () => { document.body.dataset.prefetchedAfter = after; }, // the next one is decoded and waiting
    () => {}, // its error is reported when it is needed
  );
}

function escapeHtml(text) {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

async function advance(pressed) {
  try {
    const next = await upcoming;
    if (next) show(next, pressed);
  } catch (error) {
    failed(error);
  }
}

function failed(error) {
  if (error.status === 401 || error.status === 403) {
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin();
  }
  say(error.message);
}

async function label(name, pressed) {
  const item = current;
  labelled.push(item.id);
  setLeft(left - 1);
  const sent = api("/v1/review/label", { id: item.id, label: name, who: localStorage.getItem(WHO_KEY) });
  await advance(pressed);
  try {
    const answer = await sent;
    setLeft(answer.left);
    say(answer.status === "labelled" ? "" : `${answer.status}: ${item.id}`, true);
  } catch (error) {
    labelled.splice(labelled.lastIndexOf(item.id), 1);
    failed(Object.assign(new Error(`${item.id} was not labelled: ${error.message}`), { status: error.status }));
  }
}

async function undo(pressed) {
  const id = labelled.pop();
  if (!id) {
    say("nothing to undo on this page", true);
    return;
  }
  try {
    const answer = await api("/v1/review/undo", { id, who: localStorage.getItem(WHO_KEY) });
    setLeft(answer.left);
    if (!answer.item) throw new Error(`${id} is no longer in the queue`);
    const [image, overlay] = await Promise.all([decoded(answer.item.image), decoded(answer.item.overlay)]);
    show({ item: answer.item, left: answer.left, image, overlay }, pressed);
    say(`undone: ${id} is back (its label now: ${answer.label ?? "none"})`, true);
  } catch (error) {
    failed(error);
  }
}

function act(key, pressed) {
  if (key === "u") return undo(pressed);
  if (!current) return;
  if (key === "s") return advance(pressed);
  if (key === "x") return label(invalid, pressed);
  const index = Number(key) - 1;
  if (Number.isInteger(index) && index >= 0 && index < classes.length) return label(classes[index], pressed);
}

function buttons() {
  const actions = $("actions");
  actions.replaceChildren();
  const keyed = [...classes.map((name, i) => [String(i + 1), name]), ["s", "skip"], ["x", invalid], ["u", "undo"]];
  for (const [key, text] of keyed) {
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.key = key;
    button.innerHTML = `<kbd>${key}</kbd> ${escapeHtml(text)}`;
    button.addEventListener("click", () => act(key, performance.now()));
    actions.append(button);
  }
}

function showLogin() {
  $("desk").hidden = true;
  $("done").hidden = true;
  $("login").hidden = false;
  $("who").value = localStorage.getItem(WHO_KEY) ?? "";
}

async function start() {
  try {
    const status = await api("/v1/review");
    classes = status.classes;
    invalid = status.invalid;
    setLeft(status.left);
    $("login").hidden = true;
    $("reviewer").textContent = `reviewer: ${localStorage.getItem(WHO_KEY)} · labels go to ${status.drop}`;
    buttons();
    say("");
    upcoming = fetchNext(null);
    await advance();
  } catch (error) {
    failed(error);
  }
}

document.addEventListener("keydown", (event) => {
  if (event.target instanceof HTMLInputElement || event.repeat || event.ctrlKey || event.metaKey || event.altKey) {
    return;
  }
  act(event.key.toLowerCase(), performance.now());
});

$("login").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("token").value);
  localStorage.setItem(WHO_KEY, $("who").value.trim());
  start();
});

$("again").addEventListener("click", () => {
  upcoming = fetchNext(null);
  advance();
});

if (sessionStorage.getItem(TOKEN_KEY) && localStorage.getItem(WHO_KEY)) {
  start();
} else {
  showLogin();
}
