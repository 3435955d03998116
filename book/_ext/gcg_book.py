"""Sphinx fixes for the gcg book (loaded by book/_config.yml as a local extension).

Inline scripts that an extension adds after the HTML builder started (sphinx-thebe's settings,
sphinx-togglebutton's selector) reach each page twice: once with filename None, once with ''.
The second copy of sphinx-thebe's `const THEBE_JS_URL = ...` is a JavaScript error in every
page's console. Each page keeps the first copy of every script.
"""


def _drop_duplicate_scripts(app, pagename, templatename, context, doctree):
    seen, unique = set(), []
    for script in context.get("script_files", []):
        key = (script.filename or "", script.priority, tuple(sorted(script.attributes.items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"] = unique


def setup(app):
    app.connect("html-page-context", _drop_duplicate_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
