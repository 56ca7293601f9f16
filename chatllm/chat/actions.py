"""The names of the app's own buttons (Chainlit actions), apart from the modules that make
them, so that app.py registers their callbacks without loading the chat."""

#: The buttons that delete a preset of the user's own: asked, confirmed, or kept.
DELETE_PRESET = "delete_preset"
DELETE_PRESET_CONFIRMED = "delete_preset_confirmed"
KEEP_PRESET = "keep_preset"
#: The button under a share link that stops sharing the thread.
STOP_SHARING = "stop_sharing"
#: The switcher ‹ n/m › under a message with siblings (public/elements/Branches.jsx).
SWITCH_BRANCH = "switch_branch"
#: The switcher's delete button (a version and everything after it), asked, confirmed or
#: kept.
DELETE_BRANCH = "delete_branch"
DELETE_BRANCH_CONFIRMED = "delete_branch_confirmed"
KEEP_BRANCH = "keep_branch"
