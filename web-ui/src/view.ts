import type { Model } from './model';

/** One page of the dashboard: mounted into the main element, unmounted when left. */
export interface View {
  mount(root: HTMLElement): void;
  unmount(): void;
}

export interface Context {
  model: Model;
  /** Goes to a route, e.g. "#/sessions/42". */
  go(route: string): void;
  /** A short message for screen readers and the eye. */
  announce(text: string): void;
}
