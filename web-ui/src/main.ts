import './style.css';
import { ApiError, get, setToken, token, whenUnauthorized } from './api';
import { h } from './dom';
import { EventStream, type StreamState } from './events';
import { duration } from './format';
import { Model } from './model';
import type { SessionEvent, Stats } from './types';
import type { Context, View } from './view';
import { ConfigView } from './views/config';
import { DetailView } from './views/detail';
import { InspectorView } from './views/inspector';
import { OverviewView } from './views/overview';
import { SessionsView } from './views/sessions';

const main = document.getElementById('view')!;
const nav = document.getElementById('nav')!;
const live = document.getElementById('live')!;
const signout = document.getElementById('signout')!;
const announcer = document.getElementById('announce')!;

const model = new Model();
let view: View | null = null;
let stream: EventStream | null = null;

const cx: Context = {
  model,
  go: (route) => {
    location.hash = route;
  },
  announce: (text) => {
    announcer.textContent = text;
  },
};

// Light or dark: the system's choice until the operator picks one here.
const THEME_KEY = 'kcpgate.theme';
function applyTheme(): void {
  const chosen = localStorage.getItem(THEME_KEY);
  const dark = chosen ? chosen === 'dark' : matchMedia('(prefers-color-scheme: dark)').matches;
  document.documentElement.dataset.theme = dark ? 'dark' : 'light';
}
document.getElementById('theme')!.addEventListener('click', () => {
  localStorage.setItem(THEME_KEY, document.documentElement.dataset.theme === 'dark' ? 'light' : 'dark');
  applyTheme();
  route(); // charts pick their colours when drawn
});
matchMedia('(prefers-color-scheme: dark)').addEventListener('change', applyTheme);
applyTheme();

function showState(s: StreamState): void {
  live.hidden = false;
  live.className = `badge ${s.kind}`;
  switch (s.kind) {
    case 'connecting':
      live.textContent = 'connecting…';
      break;
    case 'live':
      live.textContent = 'live';
      break;
    case 'reconnecting':
      live.textContent = `reconnecting in ${duration(s.inMs)} (attempt ${s.attempt})`;
      live.title = s.reason;
      break;
    case 'unauthorized':
      live.textContent = 'signed out';
      signOut('The gateway refused the token: sign in again.');
      break;
  }
}

function startEvents(): void {
  stream?.stop();
  stream = new EventStream(
    '/api/v1/events?interval_ms=1000',
    (e) => {
      try {
        const data = JSON.parse(e.data);
        if (e.event === 'stats') model.onStats(data as Stats, Date.now());
        else if (e.event === 'session_opened' || e.event === 'session_closed' || e.event === 'session_moved') {
          model.onSession(data as SessionEvent, Date.now());
        }
      } catch {
        // an event that is not JSON is not ours to show
      }
    },
    showState,
  );
  void stream.run();
}

function routeView(hash: string): View {
  const [path] = hash.replace(/^#/, '').split('?');
  const parts = path.split('/').filter(Boolean);
  if (parts[0] === 'sessions' && parts[1]) return new DetailView(cx, Number(parts[1]));
  if (parts[0] === 'sessions') return new SessionsView(cx);
  if (parts[0] === 'inspector') return new InspectorView(cx, parts[1] ? Number(parts[1]) : null);
  if (parts[0] === 'config') return new ConfigView(cx);
  return new OverviewView(cx);
}

let routed = '';
function route(): void {
  const hash = location.hash || '#/';
  const [path] = hash.split('?');
  // A view that rewrote its own query (sort, filter) is not mounted again.
  if (view && path === routed.split('?')[0] && hash !== routed && path === '#/sessions') {
    routed = hash;
    return;
  }
  routed = hash;
  view?.unmount();
  main.replaceChildren();
  view = routeView(hash);
  view.mount(main);
  for (const a of nav.querySelectorAll('a')) {
    const target = a.getAttribute('href')!;
    const current = target === '#/' ? path === '#/' : path.startsWith(target);
    if (current) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
}

function signOut(message = ''): void {
  stream?.stop();
  stream = null;
  view?.unmount();
  view = null;
  setToken('');
  nav.hidden = true;
  signout.hidden = true;
  live.hidden = true;
  showLogin(message);
}

function showLogin(message: string): void {
  const input = h('input', { type: 'password', id: 'token', name: 'token', autocomplete: 'current-password', required: true });
  const error = h('p', { class: 'field-error', role: 'alert' }, message);
  const form = h(
    'form',
    { class: 'login panel' },
    h('h1', {}, 'Sign in'),
    h('p', {}, 'This gateway’s admin API needs its token (-admin-token or KCPGATE_ADMIN_TOKEN). It is kept in this tab only, until you sign out or close it.'),
    h('label', { for: 'token' }, 'Admin token'),
    input,
    error,
    h('button', { type: 'submit' }, 'Sign in'),
  );
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    setToken(input.value.trim());
    error.textContent = '';
    if (!(await signIn())) error.textContent = 'The gateway refused this token.';
  });
  main.replaceChildren(form);
  input.focus();
}

/** Checks the token (or that none is needed) and opens the dashboard; false if refused. */
async function signIn(): Promise<boolean> {
  try {
    await get('/api/v1/config');
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) {
      setToken('');
      return false;
    }
    main.replaceChildren(h('p', { class: 'warn' }, `${(e as Error).message} Reload the page to try again.`));
    return true;
  }
  nav.hidden = false;
  signout.hidden = token() === '';
  startEvents();
  route();
  return true;
}

whenUnauthorized(() => {
  if (stream) signOut('The gateway refused the token: sign in again.');
});
signout.addEventListener('click', () => signOut());
window.addEventListener('hashchange', () => {
  if (stream) route();
});

// A link with the token (`kcpgate demo` prints one) signs in; the token leaves
// the address bar and the history at once.
const linked = /^#token=([^&/]+)/.exec(location.hash);
if (linked) {
  setToken(decodeURIComponent(linked[1]));
  history.replaceState(null, '', `${location.pathname}#/`);
}

// Ask for a token only when the gateway needs one and this tab has none (no
// request is made to fail on purpose).
void (async () => {
  let needed = true;
  try {
    needed = (await (await fetch('/auth', { cache: 'no-store' })).json()).token_required;
  } catch {
    // an old or unreachable gateway: try, and ask if refused
  }
  if ((needed && token() === '') || !(await signIn())) showLogin('');
})();
