import { ApiError, call } from '../api';
import { h } from '../dom';

/**
 * Asks before kicking a session, with an optional reason, in a modal dialog
 * (focus stays in it; Escape cancels). Resolves true once the gateway closed it.
 */
export function confirmKick(id: number, remote: string): Promise<boolean> {
  return new Promise((resolve) => {
    const reason = h('input', { type: 'text', name: 'reason', maxlength: 200, placeholder: 'closed by the operator', autocomplete: 'off' });
    const error = h('p', { class: 'field-error', role: 'alert' });
    const dialog = h(
      'dialog',
      { class: 'confirm', 'aria-labelledby': 'kick-title' },
      h(
        'form',
        { method: 'dialog' },
        h('h2', { id: 'kick-title' }, `Kick session ${id}?`),
        h('p', {}, `${remote} loses its connections at once. A kcpgate client is told at once and opens a new session with its next connection; a kcptun client notices within its 30 s keep-alive timeout. The old session's datagrams are refused for 60 s.`),
        h('label', {}, 'Reason (for the log and the event stream) ', reason),
        error,
        h(
          'div',
          { class: 'actions' },
          h('button', { type: 'button', class: 'secondary', onclick: () => dialog.close('cancel') }, 'Cancel'),
          h('button', { type: 'submit', value: 'kick', class: 'danger' }, 'Kick'),
        ),
      ),
    );
    dialog.addEventListener('submit', async (e) => {
      e.preventDefault();
      const why = reason.value.trim() || 'closed by the operator';
      try {
        await call('DELETE', `/api/v1/sessions/${id}?reason=${encodeURIComponent(why)}`);
        dialog.close('kicked');
      } catch (err) {
        error.textContent = err instanceof ApiError && err.status === 404 ? 'This session has already closed.' : (err as Error).message;
      }
    });
    dialog.addEventListener('close', () => {
      dialog.remove();
      resolve(dialog.returnValue === 'kicked');
    });
    document.body.append(dialog);
    dialog.showModal();
    reason.focus();
  });
}
