// The console's only script. The live view: the calls in progress and their running transcript, from the
// server-sent events of /console/live/events, with a call's actions (hang up, transfer, say), each confirmed first.
// Every piece of call data goes into the page as text (textContent), never as markup.
"use strict";

(function () {
  const live = document.getElementById("live");
  if (!live) {
    return;
  }
  const status = document.getElementById("live-status");
  const empty = document.getElementById("no-calls");
  const cards = new Map(); // call_sid -> {card, fields, lines}

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) {
      node.className = className;
    }
    if (text !== undefined) {
      node.textContent = text;
    }
    return node;
  }

  function seconds(ms) {
    return (ms / 1000).toFixed(1) + " s";
  }

  function showEmpty() {
    empty.hidden = cards.size > 0;
  }

  function card(sid) {
    let entry = cards.get(sid);
    if (entry) {
      return entry;
    }
    const node = element("section", "call live-call");
    node.dataset.sid = sid;
    const title = element("h2", "sid", sid);
    const facts = element("p", "facts");
    const fields = {};
    for (const name of ["direction", "from", "to", "turns", "latency", "cost", "state"]) {
      fields[name] = element("span", "fact " + name);
      facts.append(fields[name], " ");
    }
    fields.state.textContent = "in progress";
    const lines = element("ol", "transcript");
    const controls = actions(sid);
    node.append(title, facts, controls.form, lines);
    live.append(node);
    entry = { card: node, fields: fields, lines: lines, controls: controls };
    cards.set(sid, entry);
    showEmpty();
    return entry;
  }

  // A call's actions: POST /console/live/calls/{sid}/{action} with the session's CSRF token (the one the logout
  // form carries), after the operator confirms. The answer (JSON) shows next to the buttons.
  const token = document.querySelector('input[name="csrf"]');
  const confirmations = {
    hangup: "Hang up this call now?",
    transfer: "Transfer this call to the configured number now?",
    say: "Have the agent say this to the caller now?",
  };

  function actions(sid) {
    const form = element("form", "actions");
    form.dataset.sid = sid;
    const hangup = element("button", "action hangup", "Hang up");
    const transfer = element("button", "action transfer", "Transfer");
    const text = element("input", "say-text");
    text.type = "text";
    text.name = "text";
    text.maxLength = 2000;
    text.placeholder = "Something for the agent to say";
    text.setAttribute("aria-label", "Text for the agent to say");
    const say = element("button", "action say", "Say");
    const result = element("span", "action-result");
    result.setAttribute("role", "status");
    for (const [button, action] of [[hangup, "hangup"], [transfer, "transfer"], [say, "say"]]) {
      button.type = "button";
      button.dataset.action = action;
      button.addEventListener("click", function () {
        act(sid, action, text, result);
      });
    }
    form.addEventListener("submit", function (event) {
      event.preventDefault(); // Enter in the text field: the same as the Say button
      act(sid, "say", text, result);
    });
    form.append(hangup, " ", transfer, " ", text, " ", say, " ", result);
    return { form: form, buttons: [hangup, transfer, say, text], result: result };
  }

  function act(sid, action, text, result) {
    if (action === "say" && !text.value.trim()) {
      result.textContent = "Type what the agent should say first.";
      result.className = "action-result error";
      return;
    }
    const question = confirmations[action] + (action === "say" ? "\n\n" + text.value : "");
    if (!window.confirm(question)) {
      result.textContent = "Cancelled.";
      result.className = "action-result";
      return;
    }
    const body = new URLSearchParams({ csrf: token ? token.value : "" });
    if (action === "say") {
      body.set("text", text.value);
    }
    result.textContent = "Sending…";
    result.className = "action-result";
    fetch("/console/live/calls/" + encodeURIComponent(sid) + "/" + action, {
      method: "POST", body: body, credentials: "same-origin", headers: { Accept: "application/json" },
    }).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (answer) {
        if (response.ok) {
          result.textContent = { hangup: "Hanging up.", transfer: "Transferring.", say: "Sent to the agent." }[action];
          result.className = "action-result ok";
          if (action === "say") {
            text.value = "";
          }
        } else {
          const error = answer && answer.error ? answer.error.message : "HTTP " + response.status;
          result.textContent = "Refused: " + error;
          result.className = "action-result error";
        }
      });
    }).catch(function () {
      result.textContent = "The gateway did not answer.";
      result.className = "action-result error";
    });
  }

  function summary(call) {
    const entry = card(call.call_sid);
    const f = entry.fields;
    f.direction.textContent = call.direction;
    f.from.textContent = "from " + (call.from || "?");
    f.to.textContent = "to " + (call.to || "?");
    f.turns.textContent = call.turns + " turn(s)";
    f.latency.textContent = call.latency_ms === null ? "" : "last latency " + call.latency_ms + " ms";
    f.cost.textContent = "$" + Number(call.cost_usd).toFixed(4);
    if (Array.isArray(call.lines)) {
      entry.lines.replaceChildren();
      for (const item of call.lines) {
        line(entry, item);
      }
    }
  }

  function line(entry, item) {
    const row = element("li", "line " + item.who);
    row.append(element("span", "when", seconds(item.t_ms)), " ",
      element("span", "who", item.who === "caller" ? "Caller" : item.who === "agent" ? "Agent" : "·"), " ",
      element("span", "text", item.text));
    const following = entry.lines.scrollTop + entry.lines.clientHeight >= entry.lines.scrollHeight - 4;
    entry.lines.append(row);
    if (following) {
      entry.lines.scrollTop = entry.lines.scrollHeight; // keep the newest line in view, unless scrolled back
    }
  }

  function ended(sid) {
    const entry = cards.get(sid);
    if (!entry) {
      return;
    }
    entry.card.classList.add("ended");
    for (const control of entry.controls.buttons) {
      control.disabled = true;
    }
    entry.fields.state.textContent = "ended: ";
    const link = element("a", "record", "the call's page");
    link.href = "/console/calls/" + encodeURIComponent(sid);
    entry.fields.state.append(link);
  }

  function parse(event) {
    try {
      return JSON.parse(event.data);
    } catch (error) {
      return null;
    }
  }

  const source = new EventSource(live.dataset.stream);
  source.addEventListener("open", function () {
    status.textContent = "Live.";
    status.className = "status ok";
  });
  source.addEventListener("error", function () {
    status.textContent = "Reconnecting…";
    status.className = "status";
  });
  source.addEventListener("snapshot", function (event) {
    const data = parse(event);
    if (!data) {
      return;
    }
    // A fresh stream: the calls still in progress are exactly these; the others have ended meanwhile.
    const current = new Set(data.calls.map(function (call) { return call.call_sid; }));
    for (const [sid, entry] of cards) {
      if (!current.has(sid) && !entry.card.classList.contains("ended")) {
        ended(sid);
      }
    }
    for (const call of data.calls) {
      summary(call);
    }
    showEmpty();
  });
  source.addEventListener("call", function (event) {
    const data = parse(event);
    if (data) {
      summary(data);
    }
  });
  source.addEventListener("line", function (event) {
    const data = parse(event);
    if (data) {
      line(card(data.call_sid), data);
    }
  });
  source.addEventListener("ended", function (event) {
    const data = parse(event);
    if (data) {
      ended(data.call_sid);
    }
  });
})();

// Every page: moments in the browser's own time zone. The server writes <time datetime="...Z">, with the UTC text
// as the element's text (what shows without script) and as its tooltip.
(function () {
  const format = new Intl.DateTimeFormat(undefined, { dateStyle: "short", timeStyle: "long" });
  for (const node of document.querySelectorAll("time[datetime]")) {
    const when = new Date(node.getAttribute("datetime"));
    if (isNaN(when.getTime())) {
      continue;
    }
    if (!node.title) {
      node.title = node.textContent;
    }
    node.textContent = format.format(when);
    node.classList.add("local");
  }
})();

// A call's page: the recording's player and the timeline, linked. A click on the timeline plays from that moment;
// the playhead follows the playback.
(function () {
  const svg = document.getElementById("timeline");
  const audio = document.getElementById("recording");
  const playhead = document.getElementById("playhead");
  if (!svg || !audio || !playhead) {
    return;
  }
  const left = Number(svg.dataset.left);
  const right = Number(svg.dataset.right);
  const seconds = Number(svg.dataset.seconds);
  if (!(right > left) || !(seconds > 0)) {
    return;
  }
  svg.classList.add("seekable");

  function place() {
    const at = Math.min(Math.max(audio.currentTime / seconds, 0), 1);
    const x = String(left + at * (right - left));
    playhead.setAttribute("x1", x);
    playhead.setAttribute("x2", x);
    playhead.setAttribute("visibility", audio.currentTime > 0 || !audio.paused ? "visible" : "hidden");
  }

  let frame = 0;
  function follow() {
    place();
    frame = audio.paused ? 0 : window.requestAnimationFrame(follow);
  }

  svg.addEventListener("click", function (event) {
    const matrix = svg.getScreenCTM();
    if (!matrix) {
      return;
    }
    const point = new DOMPoint(event.clientX, event.clientY).matrixTransform(matrix.inverse());
    if (point.x < left || point.x > right) {
      return;
    }
    const target = (point.x - left) / (right - left) * seconds;
    audio.currentTime = Number.isFinite(audio.duration) ? Math.min(target, audio.duration) : target;
    place();
    if (audio.paused) {
      audio.play().catch(function () { /* autoplay refused: the position is set all the same */ });
    }
  });
  // A turn's time in the transcript plays the recording from there too.
  for (const node of document.querySelectorAll("#transcript .when[data-seek]")) {
    node.classList.add("seek");
    node.title = "Play from here";
    node.addEventListener("click", function () {
      audio.currentTime = Number(node.dataset.seek);
      place();
      if (audio.paused) {
        audio.play().catch(function () { /* autoplay refused: the position is set all the same */ });
      }
    });
  }
  audio.addEventListener("timeupdate", place);
  audio.addEventListener("seeked", place);
  audio.addEventListener("play", function () {
    if (!frame) {
      frame = window.requestAnimationFrame(follow);
    }
  });
})();
