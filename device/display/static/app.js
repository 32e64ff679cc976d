// kyc-edge customer display. No third-party code. Driven only by the closed session-event stream
// (/events, Server-Sent Events); it never receives or shows a face, a frame, a name or an ID number.
"use strict";
(function () {
  const K = window.__kyc = { screens: [], spoken: [], ring: [], events: 0 };
  let T = null, S = null, lang = "zh";
  let screen = "", holdUntil = 0, ringTimer = null, holdTimer = null;
  let last = { challenge: null, verdict: null, consent: null, hint: null };
  // one audio element for every prompt: a new prompt stops the one before it, so two never overlap;
  // K.audio records each clip's [start, end] as heard (start: 'playing'; end: ended or cut)
  const audio = new Audio();
  let clip = null;
  const endClip = () => { if (clip && clip.start && !clip.end) clip.end = performance.now(); };
  audio.addEventListener("playing", () => { if (clip && !clip.start) clip.start = performance.now(); });
  audio.addEventListener("ended", endClip);
  audio.addEventListener("error", endClip);
  K.audio = [];

  // ---- our own pictograms (viewBox 0 0 100 100; .s stroke, .f fill, .a accent stroke)
  const head = '<ellipse class="s" cx="50" cy="46" rx="22" ry="28"/><path class="s" d="M28 88c4-10 12-14 22-14s18 4 22 14"/>';
  const P = {
    card: '<rect class="s" x="12" y="24" width="76" height="52" rx="6"/><circle class="s" cx="34" cy="48" r="9"/>' +
          '<path class="s" d="M24 66c3-6 7-8 10-8s7 2 10 8M54 42h24M54 52h24M54 62h16"/><path class="a" d="M50 6v12M42 12l8 8 8-8"/>',
    camera: '<rect class="s" x="14" y="30" width="72" height="46" rx="8"/><circle class="s" cx="50" cy="53" r="14"/>' +
            '<circle class="f" cx="50" cy="53" r="5"/><path class="s" d="M36 30l6-9h16l6 9"/>',
    blink: '<path class="s" d="M8 42c12-16 26-22 42-22s30 6 42 22"/><circle class="s" cx="50" cy="42" r="9"/>' +
           '<path class="s" d="M8 72c12 12 26 16 42 16s30-4 42-16"/><path class="s" d="M20 80l-5 7M50 88v9M80 80l5 7"/>' +
           '<path class="a" d="M50 54v8M44 58l6 6 6-6"/>',
    turn_left: head + '<path class="a" d="M40 46H6M16 36L6 46l10 10"/><path class="s" d="M36 40h0M34 50c2 2 4 2 6 0"/>',
    turn_right: head + '<path class="a" d="M60 46h34M84 36l10 10-10 10"/><path class="s" d="M64 40h0M60 50c2 2 4 2 6 0"/>',
    nod: head + '<path class="a" d="M88 18v52M80 26l8-8 8 8M80 62l8 8 8-8"/>',
    hold: head + '<path class="a" d="M8 20v60M92 20v60"/>',
    wait: '<circle class="s" cx="50" cy="50" r="36"/><path class="a" d="M50 14a36 36 0 0 1 36 36"/><path class="s" d="M50 30v20l14 8"/>',
    mask: head + '<path class="a" d="M28 52c8 4 14 5 22 5s14-1 22-5v12c-6 8-14 10-22 10s-16-2-22-10z"/><path class="s" d="M20 20l60 60"/>',
    closer: head + '<path class="a" d="M6 20l14 14M6 34V20h14M94 20L80 34M94 34V20H80"/>',
    light: '<circle class="s" cx="50" cy="50" r="16"/><path class="a" d="M50 8v14M50 78v14M8 50h14M78 50h14M20 20l10 10M70 70l10 10M80 20L70 30M30 70L20 80"/>',
    one: head + '<path class="a" d="M86 8v20M82 12l4-4"/>',
    pass: '<circle class="s" cx="50" cy="50" r="40"/><path class="a" d="M30 52l14 14 28-30"/>',
    fail: '<rect class="s" x="12" y="12" width="76" height="76" rx="4"/><path class="a" d="M32 32l36 36M68 32L32 68"/>',
    clerk: '<circle class="s" cx="34" cy="30" r="12"/><path class="s" d="M14 70c2-14 10-22 20-22s18 8 20 22"/>' +
           '<rect class="s" x="6" y="70" width="88" height="18" rx="3"/><rect class="s" x="60" y="40" width="30" height="22" rx="3"/>'
  };
  const HINT_PICT = { take_off_mask: "mask", move_closer: "closer", more_light: "light", one_face_only: "one",
                      look_at_camera: "camera", move_back: "closer" };
  const svg = (k) => '<svg viewBox="0 0 100 100" aria-hidden="true">' + (P[k] || "") + "</svg>";
  const $ = (id) => document.getElementById(id);
  const t = (k) => (T && T[lang] && T[lang][k]) || (T && T.en[k]) || k;

  function speak(key) {
    if (!S || !S.voice) return;
    if (!audio.paused) audio.pause();
    endClip();
    clip = { key: key, lang: lang, start: 0, end: 0 };
    K.audio.push(clip);
    audio.src = "/voice/" + lang + "/" + key + ".wav";
    K.spoken.push({ key: key, lang: lang, t: Date.now() });
    const p = audio.play();
    if (p && p.catch) p.catch(() => {});
  }

  function ring(id, seconds) {
    clearInterval(ringTimer);
    const el = $(id);
    el.innerHTML = '<svg viewBox="0 0 120 120"><circle class="track" cx="60" cy="60" r="50"/>' +
                   '<circle class="arc" cx="60" cy="60" r="50"/></svg><span class="num"></span>';
    const arc = el.querySelector(".arc"), num = el.querySelector(".num");
    const C = 2 * Math.PI * 50, t0 = performance.now(), total = Math.max(0.1, seconds);
    arc.setAttribute("stroke-dasharray", C.toFixed(1));
    const tick = () => {
      const left = Math.max(0, total - (performance.now() - t0) / 1000);
      arc.setAttribute("stroke-dashoffset", (C * (1 - left / total)).toFixed(1));
      num.textContent = Math.ceil(left) + "";
      el.dataset.left = left.toFixed(2);
      K.ring.push({ ring: id, left: +left.toFixed(2), t: Date.now() });
      if (K.ring.length > 400) K.ring.splice(0, 100);
      if (left <= 0) clearInterval(ringTimer);
    };
    tick();
    ringTimer = setInterval(tick, 100);
  }

  function show(name, spokenKey, detail) {
    const changed = name !== screen || detail !== K.detail;
    screen = name; K.detail = detail;
    document.body.dataset.screen = name;
    if (name !== "challenge" && name !== "consent") clearInterval(ringTimer);
    if (changed) {
      K.screens.push(detail ? name + ":" + detail : name);
      if (spokenKey) speak(spokenKey);
    }
    if (changed && name !== "look") hideHint();
  }

  function hideHint() { $("hint").hidden = true; last.hint = null; }

  function renderTexts() {
    document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
    $("title").textContent = t("title");
    $("lang").textContent = t("toggle");
    document.querySelectorAll("[data-t]").forEach((el) => { el.textContent = t(el.dataset.t); });
    document.querySelectorAll("[data-pict]").forEach((el) => { if (!el.firstChild) el.innerHTML = svg(el.dataset.pict); });
    if (S) { $("notice").textContent = S.notice[lang]; $("notice-version").textContent = S.notice_version; }
    if (last.challenge) renderChallenge(last.challenge, false);
    if (last.hint) $("hint-text").textContent = t(last.hint);
    if (last.verdict) renderResult(last.verdict, false);
  }

  function renderChallenge(e, fresh) {
    $("challenge-pict").innerHTML = svg(e.prompt);
    $("challenge-text").textContent = t(e.prompt);
    $("step").textContent = t("step").replace("{k}", e.step || 1).replace("{n}", e.of || 1);
    if (fresh) { $("passed").hidden = true; ring("ring-challenge", e.deadline_s || 8); }
  }

  function renderResult(e, fresh) {
    const r = e.reason;
    if (r === "manual_review" || r === "consent_declined") {
      $("alt-title").textContent = t(r === "manual_review" ? "alt_title" : "declined_title");
      $("alt-body").textContent = t(r === "manual_review" ? "alt_body" : "declined_body");
      if (fresh) show("alternative", r === "manual_review" ? "alt_title" : "declined_title", r);
      return;
    }
    const ok = e.result === "pass";
    $("result-pict").innerHTML = svg(ok ? "pass" : "fail");
    $("result-title").textContent = t(ok ? "pass" : "fail");
    $("result-reason").textContent = ok ? "" : t(T.en["r_" + r] ? "r_" + r : "r_other");
    const retry = T.retry_reasons.indexOf(r) >= 0;
    $("result-next").textContent = ok ? t("pass_next") : t(retry ? "next_retry" : "next_clerk");
    document.body.dataset.result = e.result;
    if (fresh) show("result", ok ? "pass" : "fail", e.result + (r ? ":" + r : ""));
  }

  function onEvent(e) {
    K.events++;
    const now = Date.now();
    switch (e.event) {
      case "card_detected": case "card_read":
        holdUntil = 0; last.verdict = null; last.challenge = null;
        if (screen !== "reading") show("reading");
        break;
      case "consent":
        last.consent = e;
        $("guardian").hidden = !e.guardian_required;
        show("consent", "consent_ask");
        ring("ring-consent", e.deadline_s || 60);
        break;
      case "consent_given": case "face_wait":
        show("look", "look");
        break;
      case "capturing":
        if (e.prompt === "hold_still") show("hold", "hold_still");
        else if (screen !== "challenge") show("look", "look");
        break;
      case "hint":
        if (e.state === "cleared") { if (last.hint === e.prompt) hideHint(); break; }   // e.g. the other face left
        if (screen === "look" || screen === "challenge" || screen === "hold") {
          $("hint-pict").innerHTML = svg(HINT_PICT[e.prompt] || "camera");
          $("hint-text").textContent = t(e.prompt);
          $("hint").hidden = false;
          last.hint = e.prompt;            // stays until the screen changes or the next hint
          K.screens.push("hint:" + e.prompt);
          speak(e.prompt);
        }
        break;
      case "challenge":
        last.challenge = e;
        renderChallenge(e, true);
        show("challenge", e.prompt, e.prompt + ":" + e.step);
        break;
      case "challenge_passed":
        $("passed").hidden = false;
        break;
      case "deciding":
        show("deciding", "deciding");
        break;
      case "verdict": case "refused":
        last.verdict = { result: e.result || "fail", reason: e.reason };
        renderResult(last.verdict, true);
        holdUntil = now + 1000 * ((S && S.result_hold_s) || 8);
        clearTimeout(holdTimer);
        holdTimer = setTimeout(() => { if (Date.now() >= holdUntil) { last.verdict = null; show("idle", "idle"); } },
                               holdUntil - now + 50);
        break;
      case "idle":
        if (now >= holdUntil && screen !== "alternative") show("idle");
        break;
    }
  }

  function post(answer) {
    const x = new XMLHttpRequest();
    x.open("POST", "/consent");
    x.setRequestHeader("Content-Type", "application/json");
    x.send(JSON.stringify({ answer: answer }));
    K.screens.push("answer:" + answer);
  }

  function start() {
    renderTexts();
    $("lang").addEventListener("click", () => { lang = lang === "zh" ? "en" : "zh"; renderTexts(); });
    $("btn-agree").addEventListener("click", () => { post("agree"); show("look", "look"); });
    $("btn-decline").addEventListener("click", () => { post("decline"); });
    $("btn-alternative").addEventListener("click", () => {
      post("alternative");
      last.verdict = { result: "fail", reason: "manual_review" };
      renderResult(last.verdict, true);
    });
    show("idle", null);
    const es = new EventSource("/events");
    es.onmessage = (m) => { try { onEvent(JSON.parse(m.data)); } catch (err) { /* closed schema: ignore */ } };
    es.onopen = () => { K.connected = true; };
    K.ready = true;
  }

  Promise.all([fetch("/texts.json").then((r) => r.json()), fetch("/settings.json").then((r) => r.json())])
    .then(([texts, settings]) => { T = texts; S = settings; lang = settings.language || "zh"; start(); });
})();
