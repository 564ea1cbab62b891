// Shared by the dashboard and the three-tabs page: the session API and the countdown.
// No token is ever read here: /api/demo/session answers from the Authorization header
// that the gateway adds on the way to the backend.
const demo = {
  async session() {
    const response = await fetch("/api/demo/session", {
      headers: {"x-requested-with": "fetch"}, cache: "no-store"});
    if (response.status === 401) {
      window.location.assign("/login?next=" + encodeURIComponent(location.pathname));
      throw new Error("logged out");
    }
    const body = await response.json();
    body.status = response.status;
    return body;
  },
  async refreshes() {
    const response = await fetch("/api/demo/refreshes", {
      headers: {"x-requested-with": "fetch"}, cache: "no-store"});
    return (await response.json()).refresh_ok;
  },
  seconds(value) { return Math.max(0, value).toFixed(1) + " s"; },
};
