// The page /login answers: it keeps the session's key (given only here, never again)
// in this tab's sessionStorage, which other origins (other ports of this host
// included) cannot read, and moves on to the UI without leaving /login in the history.
const m = document.querySelector('meta[name="latch-key"]');
if (m && m.content) sessionStorage.setItem('latch-key', m.content);
location.replace('/');
