-- One token for every request: after the first, its validation is always cached.
wrk.headers["Authorization"] = "Bearer tok-cached-0001"
