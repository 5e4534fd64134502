"""The web app's tabs: one module per tab, each wired to a ready-made service
(``captioner.service`` and the demos' services), with its JavaScript, HTML and CSS in
``static/``. ``app.py`` builds the services and the page and serves it."""
