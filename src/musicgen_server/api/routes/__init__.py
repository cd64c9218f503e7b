"""One module per area of the API; `app.create_app` includes their routers."""
