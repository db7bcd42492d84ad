// rlaif review page: rate with the mouse or the keys 1-8, move with n / p.
// Every save is one POST carrying a submission id made here; a retry of the same save sends
// the same id, so the server stores it once however often it arrives. Saves are sent one
// after another (a queue), so the last rating given is the last one stored.
(function () {
  "use strict";
  const form = document.getElementById("rate-form");
  if (!form) return;
  const statusEl = document.getElementById("status");
  const field = (name) => form.elements.namedItem(name);
  let token = field("token").value;
  let submissionId = field("submission_id").value;
  const selected = form.querySelector("button.rate.selected");
  let rating = selected ? Number(selected.value) : null;
  let queue = Promise.resolve();
  let pending = 0;

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  function newId() {
    const bytes = new Uint8Array(16);
    window.crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function flagsOf(side) {
    return Array.from(form.querySelectorAll('input[name="flags_' + side + '"]:checked'), (e) => e.value);
  }

  function setStatus(text, state) {
    statusEl.textContent = text;
    statusEl.dataset.state = state;
  }

  function mark(k) {
    form.querySelectorAll("button.rate").forEach((b) => b.classList.toggle("selected", Number(b.value) === k));
  }

  async function send(body, attempt) {
    body.token = token;
    let resp;
    try {
      resp = await fetch("/api/rate", {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
        credentials: "same-origin", keepalive: true,
      });
    } catch (err) {
      // The server is away (restarting, or the network dropped): try the same submission again.
      if (attempt < 6) { await sleep(250 * 2 ** attempt); return send(body, attempt + 1); }
      throw new Error("the server cannot be reached; the rating is NOT stored yet (rate again once it is back)");
    }
    let data;
    try { data = await resp.json(); } catch (err) { data = { error: "HTTP " + resp.status }; }
    if (resp.status === 403 && data.code === "token" && attempt < 6) {
      // The server was restarted since this page was loaded: take its new token and resend.
      const fresh = await fetch("/api/token", { credentials: "same-origin" }).then((r) => r.json());
      token = fresh.token;
      field("token").value = token;
      return send(body, attempt + 1);
    }
    if (!resp.ok) throw new Error(data.error || "HTTP " + resp.status);
    return data;
  }

  async function refreshStats() {
    try {
      const html = await fetch("/stats", { credentials: "same-origin" }).then((r) => r.text());
      document.getElementById("stats").innerHTML = html;  // the server escaped every value
    } catch (err) { /* the numbers catch up on the next save */ }
  }

  function save() {
    if (rating === null) return;
    const body = {
      submission_id: submissionId, pair_id: field("pair_id").value, reviewer: field("reviewer").value,
      rating: rating, flags_left: flagsOf("left"), flags_right: flagsOf("right"), comment: field("comment").value,
    };
    submissionId = newId();  // the next change is a new submission
    pending += 1;
    setStatus("saving…", "saving");
    queue = queue.then(() => send(body, 0)).then((data) => {
      pending -= 1;
      if (pending === 0) {
        setStatus((data.duplicate ? "already saved at " : "saved at ") + new Date(data.time).toLocaleTimeString(), "saved");
        const mine = document.getElementById("mine");
        if (mine) mine.textContent = String(data.reviewed);
        return refreshStats();
      }
    }, (err) => {
      pending -= 1;
      setStatus("not saved: " + err.message, "error");
    });
  }

  function rate(k) {
    rating = k;
    mark(k);
    save();
  }

  function go(id) {
    const link = document.getElementById(id);
    if (!link) return;
    // Leave only after the queued saves are stored.
    queue.then(() => { window.location.href = link.href; });
  }

  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const button = ev.submitter;
    if (button && button.name === "rating") rate(Number(button.value));
  });

  form.addEventListener("change", (ev) => {
    const t = ev.target;
    if (t.type === "checkbox" || t.tagName === "TEXTAREA") save();
  });

  ["prev", "next", "next-unrated"].forEach((id) => {
    const link = document.getElementById(id);
    if (link) link.addEventListener("click", (ev) => { ev.preventDefault(); go(id); });
  });

  document.addEventListener("keydown", (ev) => {
    if (ev.ctrlKey || ev.metaKey || ev.altKey || ev.isComposing) return;
    const t = ev.target;
    if (t && (t.tagName === "TEXTAREA" || (t.tagName === "INPUT" && t.type !== "checkbox"))) {
      if (ev.key === "Escape") t.blur();
      return;
    }
    if (/^[1-8]$/.test(ev.key)) { ev.preventDefault(); rate(Number(ev.key)); }
    else if (ev.key === "n") { ev.preventDefault(); go("next"); }
    else if (ev.key === "p") { ev.preventDefault(); go("prev"); }
  });

  window.addEventListener("beforeunload", (ev) => {
    if (pending > 0) { ev.preventDefault(); ev.returnValue = ""; }
  });
})();
