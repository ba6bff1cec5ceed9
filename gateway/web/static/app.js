// The dashboard's only script of its own: live updates over server-sent events, and small
// conveniences after htmx swaps. Served from our origin (the CSP allows nothing inline).
(function () {
  "use strict";

  function refresh(selector, attribute) {
    const region = document.querySelector(selector);
    if (region && window.htmx) {
      window.htmx.ajax("GET", region.getAttribute(attribute), { target: region, swap: "innerHTML" });
    }
  }

  let listTimer = null;
  function refreshListSoon() {
    // Many events at once (a burst of replies) refresh the list once.
    clearTimeout(listTimer);
    listTimer = setTimeout(function () { refresh("[data-live-list]", "data-live-list"); }, 300);
  }

  // The tab title carries the count of conversations with replies this user has not read.
  let unreadTimer = null;
  function countUnreadSoon() {
    clearTimeout(unreadTimer);
    unreadTimer = setTimeout(function () {
      fetch("/conversations/unread", { headers: { Accept: "application/json" } })
        .then(function (answer) { return answer.ok ? answer.json() : null; })
        .then(function (found) {
          if (!found) { return; }
          const title = document.title.replace(/^\(\d+\) /, "");
          document.title = (found.count ? "(" + found.count + ") " : "") + title;
        })
        .catch(function () {});
    }, 300);
  }

  // Being told of a reply in a conversation left to you or to everyone: a sound and a browser
  // notification, each switched on by the dispatcher (permission is asked on that click, never
  // on load) and remembered in this browser.
  const ALERTS = { notify: "gateway-notify", sound: "gateway-sound" };
  function wants(kind) {
    try { return window.localStorage.getItem(ALERTS[kind]) === "1"; } catch (e) { return false; }
  }
  function remember(kind, on) {
    try { window.localStorage.setItem(ALERTS[kind], on ? "1" : "0"); } catch (e) { /* private mode */ }
  }
  function showToggles() {
    [["notify", "notify-toggle", "Notifications"], ["sound", "sound-toggle", "Sound"]].forEach(function (t) {
      const button = document.getElementById(t[1]);
      if (!button) { return; }
      const on = wants(t[0]) && (t[0] !== "notify" || (window.Notification && Notification.permission === "granted"));
      button.setAttribute("aria-pressed", on ? "true" : "false");
      button.textContent = t[2] + ": " + (on ? "on" : "off");
    });
  }
  document.addEventListener("click", function (event) {
    const button = event.target && event.target.closest && event.target.closest("button.toggle");
    if (!button) { return; }
    if (button.id === "sound-toggle") {
      remember("sound", !wants("sound"));
      if (wants("sound")) { beep(); }  // a first sound on the click lets the page play later
    } else if (button.id === "notify-toggle") {
      if (wants("notify")) { remember("notify", false); }
      else if (window.Notification) {
        Notification.requestPermission().then(function (answer) {
          remember("notify", answer === "granted");
          showToggles();
        });
      }
    }
    showToggles();
  });
  let audio = null;
  function beep() {
    try {
      audio = audio || new (window.AudioContext || window.webkitAudioContext)();
      const tone = audio.createOscillator(), gain = audio.createGain();
      tone.frequency.value = 880;
      gain.gain.setValueAtTime(0.15, audio.currentTime);
      gain.gain.exponentialRampToValueAtTime(0.001, audio.currentTime + 0.3);
      tone.connect(gain).connect(audio.destination);
      tone.start();
      tone.stop(audio.currentTime + 0.3);
    } catch (e) { /* no audio here */ }
  }
  function tell(data) {
    const me = document.body.getAttribute("data-user");
    if (data.assigned_to !== null && data.assigned_to !== undefined && String(data.assigned_to) !== me) {
      return;  // someone else's conversation
    }
    const open = document.querySelector("[data-thread]");
    const looking = !document.hidden && open && open.getAttribute("data-thread") === String(data.conversation_id);
    if (looking) { return; }
    if (wants("sound")) { beep(); }
    if (wants("notify") && window.Notification && Notification.permission === "granted") {
      const note = new Notification("New reply", { body: data.text || "", tag: "conversation-" + data.conversation_id });
      note.onclick = function () {
        window.focus();
        window.location.assign("/conversations/" + data.conversation_id);
      };
    }
  }

  function onChange(event) {
    let data = {};
    try { data = JSON.parse(event.data); } catch (e) { return; }
    const thread = document.querySelector("[data-thread]");
    if (thread && String(data.conversation_id) === thread.getAttribute("data-thread")) {
      refresh("[data-thread]", "data-src");
    }
    refreshListSoon();
    countUnreadSoon();
    if (event.type === "reply") { tell(data); }
  }

  function connect() {
    const url = document.body.getAttribute("data-live");
    if (!url || !window.EventSource) { return; }
    const light = document.getElementById("live-state");
    // EventSource reconnects by itself and sends Last-Event-ID: the server replays from there.
    const source = new EventSource(url);
    ["reply", "bounce", "state", "keyword", "other", "conversation"].forEach(function (type) {
      source.addEventListener(type, onChange);
    });
    source.addEventListener("open", function () { if (light) { light.className = "live on"; } });
    source.addEventListener("error", function () { if (light) { light.className = "live off"; } });
  }

  document.addEventListener("htmx:afterSwap", function (event) {
    const target = event.detail.target;
    if (target && target.id === "thread") {
      const list = document.getElementById("messages");
      if (list) { list.lastElementChild && list.lastElementChild.scrollIntoView({ block: "end" }); }
    }
    const draft = document.getElementById("draft");
    if (draft && (target === draft || (target && target.contains && target.contains(draft)))) {
      draft.dispatchEvent(new Event("input", { bubbles: true }));
    }
  });

  // What cannot be taken back asks first: a form with data-confirm says what it will do.
  document.addEventListener("submit", function (event) {
    const form = event.target;
    const question = form && form.getAttribute && form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) {
      event.preventDefault();
    }
  });

  // Alt+↓ and Alt+↑ open the next and the previous conversation of the list, from anywhere
  // on the page (typing included): a dispatcher works through the list from the keyboard.
  document.addEventListener("keydown", function (event) {
    if (!event.altKey || (event.key !== "ArrowDown" && event.key !== "ArrowUp")) { return; }
    const links = Array.from(document.querySelectorAll("ul.conversations li > a"));
    if (!links.length) { return; }
    const open = links.findIndex(function (a) { return a.parentElement.classList.contains("open"); });
    const next = open < 0 ? 0 : open + (event.key === "ArrowDown" ? 1 : -1);
    if (next >= 0 && next < links.length) {
      event.preventDefault();
      window.location.assign(links[next].href);
    }
  });

  // Ctrl+Enter (Cmd+Enter on a Mac) in a text sends it, as in the messengers dispatchers use.
  document.addEventListener("keydown", function (event) {
    const field = event.target;
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey) && field &&
        field.id === "draft" && field.form) {
      event.preventDefault();
      field.form.requestSubmit();
    }
  });

  // On a phone the header folds its links under a Menu button.
  document.addEventListener("click", function (event) {
    const toggle = event.target && event.target.closest && event.target.closest(".menu-toggle");
    if (!toggle) { return; }
    const header = toggle.closest("header");
    const open = header.classList.toggle("nav-open");
    toggle.setAttribute("aria-expanded", open ? "true" : "false");
  });

  // A table stacked on a phone names each cell by its column.
  function labelCells(root) {
    (root || document).querySelectorAll("table").forEach(function (table) {
      const heads = Array.from(table.querySelectorAll("thead th")).map(function (th) {
        return th.textContent.trim();
      });
      if (!heads.length) { return; }
      table.querySelectorAll("tbody tr").forEach(function (row) {
        Array.from(row.children).forEach(function (cell, index) {
          if (heads[index] && !cell.hasAttribute("data-label")) {
            cell.setAttribute("data-label", heads[index]);
          }
        });
      });
    });
  }
  document.addEventListener("htmx:afterSwap", function (event) { labelCells(event.detail.target); });

  document.addEventListener("DOMContentLoaded", function () {
    connect();
    labelCells(document);
    showToggles();
    if (document.body.getAttribute("data-user")) { countUnreadSoon(); }
    const list = document.getElementById("messages");
    if (list && list.lastElementChild) { list.lastElementChild.scrollIntoView({ block: "end" }); }
  });
})();
