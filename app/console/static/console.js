// The console's few behaviours, without inline script (the Content-Security-Policy allows only
// this file): dates in the viewer's time zone, copy buttons, confirmations, a raw key's address
// replaced so a reload does not show it again, busy buttons, and auto-submitting filters.
(function () {
  "use strict";

  function localTimes() {
    var day = new Intl.DateTimeFormat(undefined, {year: "numeric", month: "short", day: "numeric"});
    var time = new Intl.DateTimeFormat(undefined, {hour: "2-digit", minute: "2-digit"});
    document.querySelectorAll("time[datetime]").forEach(function (el) {
      var when = new Date(el.getAttribute("datetime"));
      if (isNaN(when)) { return; }
      el.title = el.textContent;  // the UTC original
      var date = document.createElement("span"), clock = document.createElement("span");
      date.textContent = day.format(when);
      clock.textContent = time.format(when);
      el.textContent = "";
      el.append(date, " ", clock);  // each part whole; a narrow cell breaks between them
    });
  }

  function copyButtons() {
    document.querySelectorAll("[data-copy]").forEach(function (button) {
      button.addEventListener("click", function () {
        var field = document.getElementById(button.getAttribute("data-copy"));
        var done = function () {
          button.textContent = "Copied";
          setTimeout(function () { button.textContent = "Copy"; }, 2000);
        };
        field.select();
        if (navigator.clipboard && window.isSecureContext) {
          navigator.clipboard.writeText(field.value).then(done, function () {
            document.execCommand("copy"); done();
          });
        } else {
          document.execCommand("copy"); done();
        }
      });
    });
  }

  function confirmations() {
    document.querySelectorAll("form[data-confirm]").forEach(function (form) {
      form.addEventListener("submit", function (event) {
        if (!window.confirm(form.getAttribute("data-confirm"))) { event.preventDefault(); }
      });
    });
  }

  function replaceAddress() {
    var shown = document.querySelector("[data-replace-url]");
    if (shown && window.history && history.replaceState) {
      history.replaceState(null, "", shown.getAttribute("data-replace-url"));
    }
  }

  function busyForms() {
    document.querySelectorAll("form[data-busy]").forEach(function (form) {
      form.addEventListener("submit", function () {
        // An empty file input would be sent as an empty file part: leave it out.
        form.querySelectorAll("input[type=file]").forEach(function (input) {
          if (!input.files || input.files.length === 0) { input.disabled = true; }
        });
        var button = form.querySelector("button[type=submit]");
        if (button) {
          setTimeout(function () {
            button.disabled = true;
            button.setAttribute("aria-busy", "true");
            button.textContent = form.getAttribute("data-busy");
          }, 0);
        }
      });
    });
    window.addEventListener("pageshow", function () {
      document.querySelectorAll("input[type=file][disabled]").forEach(function (input) {
        input.disabled = false;
      });
    });
  }

  function autoSubmit() {
    document.querySelectorAll("[data-autosubmit]").forEach(function (select) {
      select.addEventListener("change", function () { select.form.submit(); });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    localTimes(); copyButtons(); confirmations(); replaceAddress(); busyForms(); autoSubmit();
  });
})();
