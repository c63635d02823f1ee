"""What runs in the browser: the page's styles, its keys, typed numbers kept as typed, and the form kept in the
browser's storage.

On a narrow screen (a phone, 400 px) Generate, Stop and the progress bar sit in a bar fixed at the
bottom of the window, so they stay in reach below a long form.

Installed by one page-load script, so the page works the same however it is launched (``sdcompose ui``,
``launch()``, or mounted in another app).
"""
from __future__ import annotations

import json

STORAGE_KEY = "sdcompose-form"

CSS = """
.sdc-error { color: var(--error-text-color, #dc2626); font-weight: 600; }
.sdc-tokens { font-size: 0.85em; color: var(--body-text-color-subdued, #6b7280); }
#sdc-prompt-tokens, #sdc-negative-tokens { text-align: right; min-height: 0; }
#sdc-progress:empty { display: none; }
.sdc-bar { height: 10px; border-radius: 5px; background: var(--neutral-200, #e5e7eb); overflow: hidden; }
.sdc-bar-fill { height: 100%; background: var(--color-accent, #f97316); transition: width 0.2s; }
.sdc-bar-text { font-size: 0.9em; margin-top: 2px; }
@media (max-width: 720px) {
  #sdc-actions { position: fixed; left: 0; right: 0; bottom: 0; z-index: 50; padding: 6px 10px;
                 background: var(--background-fill-primary, white); box-shadow: 0 -2px 6px rgba(0, 0, 0, 0.15); }
  body { padding-bottom: 90px; }
}
"""

# Ctrl+Enter (Cmd+Enter) generates and Esc stops, from anywhere in the page, as in AUTOMATIC1111's UI.
KEYS = """
document.addEventListener('keydown', (event) => {
  const click = (id) => { const b = document.getElementById(id); if (b) { event.preventDefault(); b.click(); } };
  if (event.key === 'Enter' && (event.ctrlKey || event.metaKey)) click('sdc-generate');
  else if (event.key === 'Escape' && !document.querySelector('[role=listbox]')) click('sdc-stop');
});
"""

# A number typed into a slider's box stays as typed: Gradio would clamp it to the slider's range when the box loses
# focus, so 99999 as a width would run as 4096 without a word. Kept, it reaches the request schema, which refuses
# it with its own sentence in the status line ("width must be between 64 and 4096, got 99999").
KEEP_TYPED = """
window.addEventListener('blur', (event) => {
  const box = event.target;
  if (!(box instanceof HTMLInputElement) || box.type !== 'number') return;
  const range = box.closest('.block') && box.closest('.block').querySelector('input[type=range]');
  if (!range || box.value === '') return;
  const value = Number(box.value);
  if (value < Number(range.min) || value > Number(range.max)) event.stopImmediatePropagation();
}, true);
"""


def on_load() -> str:
    """The page-load script: styles and keys, installed once per page."""
    return ("() => { if (window.__sdcompose) return; window.__sdcompose = true;"
            f" const style = document.createElement('style'); style.textContent = {json.dumps(CSS)};"
            f" document.head.appendChild(style); {KEYS} {KEEP_TYPED} }}")


def save_form(names: list[str]) -> str:
    """An event script taking the fields ``names`` (in order) and keeping them in localStorage."""
    return (f"(...values) => {{ const names = {json.dumps(names)}; const form = {{}};"
            " names.forEach((name, i) => { form[name] = values[i]; });"
            f" try {{ localStorage.setItem({json.dumps(STORAGE_KEY)}, JSON.stringify(form)); }} catch (e) {{}}"
            " return []; }")


def load_form(names: list[str]) -> str:
    """An event script taking the fields ``names`` and returning them as kept, where kept (else as they are)."""
    return (f"(...values) => {{ const names = {json.dumps(names)}; let form = {{}};"
            f" try {{ form = JSON.parse(localStorage.getItem({json.dumps(STORAGE_KEY)}) || '{{}}') || {{}}; }}"
            " catch (e) {}"
            " return names.map((name, i) => (name in form && form[name] !== null) ? form[name] : values[i]); }")


def mark_ready() -> str:
    """The page-load chain's last step: ``<body data-sdc-ready>`` says the form is back and its pickers follow it."""
    return "() => { document.body.dataset.sdcReady = '1'; }"


def forget_form() -> str:
    return f"() => {{ localStorage.removeItem({json.dumps(STORAGE_KEY)}); location.reload(); }}"
