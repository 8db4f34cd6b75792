"""Airflow plugin: the Campaigns view in the Airflow UI.

Mounts the view's FastAPI app (plugins/campaigns_view) in the api-server under /campaigns and adds "Campaigns"
to the UI's navigation as an external view with a `url_route`, which Airflow renders inside its own page (an
iframe at /plugin/campaigns), so analysts stay in the Airflow UI and behind its login. No second web server.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from airflow.configuration import conf
from airflow.plugins_manager import AirflowPlugin
from campaigns_view.app import MOUNT_PREFIX, create_app

# The UI loads the view and its icon from these paths as given; a base_url with a path (Airflow served under a
# prefix) must be part of them.
_ROOT = urlsplit(conf.get("api", "base_url", fallback="") or "").path.rstrip("/")


class CampaignsViewPlugin(AirflowPlugin):
    """The "Campaigns" navigation entry and the app that serves it."""

    name = "campaigns_view"
    fastapi_apps = [{"app": create_app(), "url_prefix": MOUNT_PREFIX, "name": "Campaigns"}]
    external_views = [{
        "name": "Campaigns",
        "href": f"{_ROOT}{MOUNT_PREFIX}/",
        "destination": "nav",
        "url_route": "campaigns",
        "icon": f"{_ROOT}{MOUNT_PREFIX}/static/campaigns.svg",
        "nav_top_level": True,
    }]
