// pinflow UI: the little JavaScript that htmx does not do. No inline scripts anywhere.
"use strict";

// Times: the server writes UTC (<time datetime=... title="... UTC">); show the browser's own
// time zone, keep the UTC instant in the tooltip. Seconds at most, never microseconds.
const pad = (n) => String(n).padStart(2, "0");
function localTimes(root) {
  for (const el of root.querySelectorAll("time[datetime]")) {
    if (el.dataset.local) continue;
    const moment = new Date(el.getAttribute("datetime"));
    if (Number.isNaN(moment.getTime())) continue;
    const day = `${moment.getFullYear()}-${pad(moment.getMonth() + 1)}-${pad(moment.getDate())}`;
    const clock = `${pad(moment.getHours())}:${pad(moment.getMinutes())}`;
    el.textContent = el.dataset.short
      ? `${day.slice(5)} ${clock}`
      : `${day} ${clock}:${pad(moment.getSeconds())}`;
    el.dataset.local = "1";
  }
}

document.addEventListener("DOMContentLoaded", () => {
  localTimes(document);
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
        event.stopImmediatePropagation();
        message.textContent = "conf must be a JSON object, like {\"day\": \"2026-12-01\"}";
        message.hidden = false;
        field.setAttribute("aria-invalid", "true");
        field.focus();
      }
    });
  }
  // The task graph: pointing at a task brings out its edges and dims the rest, so one
  // task's dependencies can be followed through a graph of 200.
  for (const svg of document.querySelectorAll("svg.graph")) {
    const mark = (task) => {
      svg.classList.toggle("focus", Boolean(task));
      for (const edge of svg.querySelectorAll("path.edge")) {
        edge.classList.toggle("near", Boolean(task) && (edge.dataset.from === task || edge.dataset.to === task));
      }
    };
    for (const node of svg.querySelectorAll("g.node")) {
      node.addEventListener("mouseenter", () => mark(node.dataset.task));
      node.addEventListener("mouseleave", () => mark(null));
    }
  }
  // A select that says so submits its form when it changes (the graph's run).
  for (const select of document.querySelectorAll("select[data-autosubmit]")) {
    select.addEventListener("change", () => select.form.requestSubmit());
  }
});

// Content htmx swapped in (a run's live fragment) gets local times too.
document.addEventListener("htmx:load", (event) => localTimes(event.target));

// Forms that cancel or clear ask first (delegated: the live fragment's forms come and go).
document.addEventListener("submit", (event) => {
  const form = event.target;
  if (form instanceof HTMLFormElement && form.dataset.confirm && !window.confirm(form.dataset.confirm)) {
    event.preventDefault();
  }
});
