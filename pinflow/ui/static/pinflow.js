// pinflow UI: the little JavaScript that htmx does not do. No inline scripts anywhere.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  // A trigger form's conf must be a JSON object: say so before it is sent.
  for (const form of document.querySelectorAll("form[data-json-field]")) {
    const field = form.elements[form.dataset.jsonField];
    const message = form.querySelector("#" + form.dataset.jsonField + "-error");
    form.addEventListener("submit", (event) => {
      const text = field.value.trim();
      if (!text) return;
      let value;
      try {
        value = JSON.parse(text);
      } catch (error) {
        value = undefined;
      }
      if (value === null || typeof value !== "object" || Array.isArray(value)) {
        event.preventDefault();
        message.textContent = "conf must be a JSON object, like {\"day\": \"2026-12-01\"}";
        message.hidden = false;
        field.setAttribute("aria-invalid", "true");
        field.focus();
      }
    });
  }
});
