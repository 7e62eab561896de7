// The console's only script. The live view: the calls in progress and their running transcript, from the
// server-sent events of /console/live/events. Every piece of call data goes into the page as text (textContent),
// never as markup.
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
    node.append(title, facts, lines);
    live.append(node);
    entry = { card: node, fields: fields, lines: lines };
    cards.set(sid, entry);
    showEmpty();
    return entry;
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
