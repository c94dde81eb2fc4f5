// Runs before the first paint: apply the theme the user picked last time (or none: follow the system).
"use strict";
(function () {
  let theme = null;
  try {
    theme = localStorage.getItem("ollama-host-theme");
  } catch (_) {
    // Storage can be off (private windows, policies); the system theme is used then.
  }
  if (theme === "light" || theme === "dark") {
    document.documentElement.dataset.theme = theme;
  }
})();
