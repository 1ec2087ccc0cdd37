"""``python -m spisonet.correction > docs/settings.md``: regenerate the settings page."""

from spisonet.correction.settings import settings_markdown

print(settings_markdown(), end="")
