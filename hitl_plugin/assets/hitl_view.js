// The HITL view's one script (served by the plugin; no library, no download).
// 1. Follow the colour mode of the Airflow page that frames this one (same origin): its
//    <html> carries the class "light" or "dark"; else Airflow's stored choice; else the
//    system's; and take its colour tokens. ?theme=light|dark (data-theme-fixed) wins.
// 2. Keep a waiting round's progress live: poll its JSON every 30 s, count down to the
//    deadline.
(function () {
  "use strict";
  var root = document.documentElement;

  function hostMode() {
    try {
      if (window.parent !== window) {
        var cls = window.parent.document.documentElement.classList;
        if (cls.contains("dark")) return "dark";
        if (cls.contains("light")) return "light";
      }
    } catch (e) { /* another origin: fall through */ }
    try {
      var stored = window.localStorage.getItem("theme");
      if (stored === "dark" || stored === "light") return stored;
    } catch (e) { /* storage disabled */ }
    return window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches
      ? "dark" : "light";
  }

  // Airflow's own colour tokens, when the framing page has them (a customised theme too).
  var TOKENS = { "--bg": "--chakra-colors-bg", "--bg-subtle": "--chakra-colors-bg-subtle",
    "--bg-muted": "--chakra-colors-bg-muted", "--fg": "--chakra-colors-fg",
    "--fg-muted": "--chakra-colors-fg-muted", "--border": "--chakra-colors-border" };

  function copyHostTokens() {
    try {
      if (window.parent === window) return;
      var host = window.parent.getComputedStyle(window.parent.document.documentElement);
      for (var name in TOKENS) {
        var value = host.getPropertyValue(TOKENS[name]).trim();
        if (value) root.style.setProperty(name, value);
        else root.style.removeProperty(name);
      }
    } catch (e) { /* another origin: keep the stylesheet's */ }
  }

  function applyMode() {
    if (root.hasAttribute("data-theme-fixed")) return;
    var mode = hostMode();
    root.classList.remove(mode === "dark" ? "light" : "dark");
    root.classList.add(mode);
    copyHostTokens();
  }

  applyMode();
  try {
    if (window.parent !== window) {
      new MutationObserver(applyMode).observe(window.parent.document.documentElement,
        { attributes: true, attributeFilter: ["class"] });
    }
  } catch (e) { /* another origin */ }

  function setNumber(id, value) {
    var el = document.querySelector('[data-testid="' + id + '"]');
    if (!el) return;
    el.textContent = String(value);
    el.setAttribute("data-value", JSON.stringify(value));
  }

  function countdown() {
    var els = document.querySelectorAll("[data-countdown]");
    for (var i = 0; i < els.length; i++) {
      var left = (Date.parse(els[i].getAttribute("data-countdown")) - Date.now()) / 1000;
      if (isNaN(left)) continue;
      if (left <= 0) { els[i].textContent = "(passed)"; continue; }
      var h = Math.floor(left / 3600), m = Math.floor((left % 3600) / 60);
      els[i].textContent = "(in " + (h ? h + " h " : "") + m + " min)";
    }
  }

  function poll(block) {
    var url = block.getAttribute("data-progress-url");
    var run = block.getAttribute("data-testid").slice("progress-".length);
    fetch(url, { credentials: "same-origin" }).then(function (r) {
      return r.ok ? r.json() : null;
    }).then(function (p) {
      if (!p || p.error) return;
      setNumber("progress-done-" + run, p.done);
      setNumber("progress-total-" + run, p.total);
      setNumber("progress-annotated-" + run, p.annotated);
      setNumber("progress-skipped-" + run, p.skipped);
      var bar = document.querySelector('[data-testid="progress-bar-' + run + '"]');
      if (bar && p.total) bar.style.width = (100 * p.done / p.total).toFixed(1) + "%";
    }).catch(function () { /* keep the last numbers */ });
  }

  document.addEventListener("DOMContentLoaded", function () {
    applyMode();
    countdown();
    var blocks = document.querySelectorAll("[data-progress-url]");
    if (blocks.length) {
      setInterval(function () {
        for (var i = 0; i < blocks.length; i++) poll(blocks[i]);
        countdown();
      }, 30000);
    }
  });
})();
