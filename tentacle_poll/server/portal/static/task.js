// Streams a task's output into the page (server-sent events). A cut stream resumes by itself
// from the last line received (the browser sends it back as Last-Event-ID); a line is never
// shown twice (its number is checked). Lines are rendered once per frame, however many
// arrived, as one block per frame: the browser lays out only the new block (and skips the
// blocks out of sight, `content-visibility`), so 10,000 lines a second leave the page usable.
// Everything received is set as text, never as markup.
"use strict";

const MAX_SHOWN_LINES = 20000; // older lines leave the page; the text download keeps them
const LINE_HEIGHT_EM = 1.2;
// Terminal colour and cursor sequences (CSI, OSC, and two-character escapes): a deploy tool's
// colours would show as "[31m" noise. The text download keeps them.
const TERMINAL_SEQUENCES = /\x1b\[[0-?]*[ -\/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]/g;

function follower(output) {
  const counter = document.getElementById("output-lines");
  const status = document.getElementById("output-status");
  let lastSeq = Number(output.dataset.lastSeq); // a long output opens near its end
  let shownLines = 0;
  let pending = [];
  let scheduled = false;

  function render(ended = false) {
    scheduled = false;
    // A line cut by the agent goes on in the next one: keep its start until that arrives.
    const held = !ended && pending.length && pending[pending.length - 1][3] ? 1 : 0;
    const ready = pending.slice(0, pending.length - held);
    if (ready.length === 0) return;
    const atBottom = window.innerHeight + window.scrollY >= document.body.scrollHeight - 40;
    output.append(blockOf(ready));
    shownLines += ready.length;
    pending = pending.slice(ready.length);
    while (shownLines > MAX_SHOWN_LINES && output.firstChild) {
      shownLines -= Number(output.firstChild.dataset.lines);
      output.firstChild.remove();
      output.classList.add("trimmed");
    }
    counter.textContent = String(lastSeq);
    output.dataset.lastSeq = String(lastSeq);
    if (atBottom) window.scrollTo(0, document.body.scrollHeight);
  }

  function schedule() {
    if (scheduled) return;
    scheduled = true;
    if (document.hidden) setTimeout(() => render(), 250); // no frames in a background tab
    else requestAnimationFrame(() => render());
  }

  return {
    add(lines) {
      for (const line of lines) {
        if (line[0] <= lastSeq) continue;
        lastSeq = line[0];
        pending.push(line);
      }
      schedule();
    },
    flush: () => render(true),
    last: () => lastSeq,
    say(text) { status.textContent = text; },
  };
}

// One block of lines, a <span> per run of lines from the same stream, its text set at once.
function blockOf(lines) {
  const block = document.createElement("div");
  block.dataset.lines = String(lines.length);
  // Its height until it is first laid out (it may be out of sight): a line each.
  block.style.containIntrinsicSize = `auto ${lines.length * LINE_HEIGHT_EM}em`;
  let span = null;
  let text = "";
  const close = () => {
    if (!span) return;
    span.textContent = text;
    block.append(span);
  };
  for (const [, stream, line, continues] of lines) {
    if (!span || span.className !== stream) {
      close();
      span = document.createElement("span");
      span.className = stream;
      text = "";
    }
    const shown = line.replace(TERMINAL_SEQUENCES, "");
    text += continues ? shown : shown + "\n";
  }
  close();
  return block;
}

// As the server writes a moment: local time, to the second.
function when(stamp) {
  if (!stamp) return "-";
  const t = new Date(stamp * 1000);
  const two = (n) => String(n).padStart(2, "0");
  return `${t.getFullYear()}-${two(t.getMonth() + 1)}-${two(t.getDate())} ` +
    `${two(t.getHours())}:${two(t.getMinutes())}:${two(t.getSeconds())}`;
}

function showTask(task) {
  const state = document.getElementById("task-state");
  state.textContent = task.state;
  state.className = `state ${task.state}`;
  document.getElementById("task-exit-code").textContent = task.exit_code ?? "-";
  document.getElementById("task-reason").textContent = task.reason || "-";
  document.getElementById("task-started").textContent = when(task.started_at);
  document.getElementById("task-finished").textContent = when(task.finished_at);
  const cancel = document.querySelector("#cancel button");
  if (cancel && task.cancel_requested) cancel.textContent = "Cancel requested";
  if (cancel && ["succeeded", "failed", "cancelled", "timed_out", "lost", "expired"].includes(task.state)) {
    cancel.closest("form").remove();
  }
}

// The browser reconnects by itself after a cut, but gives up for good when an answer is not a
// stream (a 503 while the server restarts, a 502 from a proxy, a 401 once signed out): then
// the page asks whether it is still signed in and, if so, opens the stream again after the last
// line it has, until the task's end is seen.
const RETRY_AFTER_MS = 3000;

function follow(output) {
  const lines = follower(output);
  const open = () => {
    const source = new EventSource(streamAfter(output.dataset.stream, lines.last()));
    source.addEventListener("open", () => lines.say("(live)"));
    source.addEventListener("lines", (message) => lines.add(JSON.parse(message.data)));
    source.addEventListener("task", (message) => showTask(JSON.parse(message.data)));
    source.addEventListener("end", () => {
      source.close();
      lines.flush();
      lines.say("(ended)");
      output.dataset.ended = "true";
    });
    source.addEventListener("signed-out", () => {
      source.close();
      window.location.assign("/portal/sign-in");
    });
    source.addEventListener("error", () => {
      if (source.readyState !== EventSource.CLOSED) {
        lines.say("(reconnecting…)");
        return;
      }
      lines.say("(server away: trying again)");
      setTimeout(() => stillSignedIn().then((yes) => { if (yes) open(); }), RETRY_AFTER_MS);
    });
  };
  open();
}

function streamAfter(stream, lastSeq) {
  const url = new URL(stream, window.location.href);
  url.searchParams.set("after", String(lastSeq));
  return url.pathname + url.search;
}

// False (and off to sign-in) once the session is gone; true otherwise, even if the server is
// still away (the next try will tell).
async function stillSignedIn() {
  try {
    const response = await fetch("/portal/fleet.json?limit=1", { credentials: "same-origin" });
    if (response.status === 401) {
      window.location.assign("/portal/sign-in");
      return false;
    }
  } catch (away) {
    // the server cannot be reached yet: try the stream again anyway
  }
  return true;
}

document.addEventListener("DOMContentLoaded", () => {
  const output = document.getElementById("output");
  if (output) follow(output);
});
