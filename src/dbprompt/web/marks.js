"use strict";
// Marks: ✓ (what the query asked for) and ✗ (not) on each result of a text search; a second press withdraws.

function feedbackURL() {
  return `${databaseURL()}/feedback`;
}

function probeMarks() {
  const db = currentDatabase();
  marksOn = Boolean(db && db.feedback);
}

async function loadMarks(query) {
  marked = new Map();
  if (!marksOn || query === null) return;
  const body = await getJSON(`${feedbackURL()}?${new URLSearchParams({ query })}`);
  for (const m of body.marks) if (m.image_id !== null) marked.set(m.image_id, m.relevant);
}

function markButtons(hit) {
  const box = element("span", "marks");
  box.dataset.id = hit.id;
  for (const [relevant, sign, name] of [[true, "✓", "relevant"], [false, "✗", "not relevant"]]) {
    const b = button(sign, `mark ${relevant ? "yes" : "no"}`, () => mark(hit, relevant));
    b.title = `mark as ${name} to this query (${relevant ? "Y" : "N"} in the viewer); again to withdraw`;
    b.setAttribute("aria-label", `${name}`);
    box.append(b);
  }
  return box;
}

function marking() {
  return marksOn && shown && shown.response.query !== null;
}

function showMarks() {
  for (const box of document.querySelectorAll(".marks")) {
    const state = marked.get(Number(box.dataset.id));
    box.querySelector(".yes").setAttribute("aria-pressed", String(state === true));
    box.querySelector(".no").setAttribute("aria-pressed", String(state === false));
    box.closest(".result, dialog").classList.toggle("is-relevant", state === true);
    box.closest(".result, dialog").classList.toggle("is-irrelevant", state === false);
  }
  const n = marked.size;
  $("#marks-status").textContent = marking()
    ? (n ? `${n} marked for this query. ` : "") + "Mark results ✓ or ✗ to teach the search (dbprompt train --feedback)."
    : "";
}

async function mark(hit, relevant) {
  const query = shown && shown.response.query;
  if (query === null) return;
  const withdraw = marked.get(hit.id) === relevant;
  try {
    if (withdraw) {
      await getJSON(`${feedbackURL()}?${new URLSearchParams({ query, image_id: hit.id })}`, { method: "DELETE" });
      marked.delete(hit.id);
    } else {
      await getJSON(feedbackURL(), {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ query, image_id: hit.id, relevant }),
      });
      marked.set(hit.id, relevant);
    }
    showMarks();
  } catch (error) {
    setStatus(`Mark not kept: ${error.message}`, true);
  }
}
