// Toasts: every error a person should know about is said here in words.
import { h } from './dom';

let stack: HTMLElement | null = null;

function container(): HTMLElement {
  if (!stack?.isConnected) {
    stack = h('div', { class: 'toasts', role: 'status', 'aria-live': 'polite' });
    document.body.append(stack);
  }
  return stack;
}

export type ToastKind = 'error' | 'info' | 'success';

/** Show a message; errors stay longer and can be dismissed. */
export function toast(message: string, kind: ToastKind = 'info', seconds?: number): HTMLElement {
  const close = h('button', { class: 'toast-close', type: 'button', 'aria-label': 'Dismiss' }, '×');
  const element = h('div', { class: `toast toast-${kind}`, role: kind === 'error' ? 'alert' : 'status' },
    h('span', { class: 'toast-text' }, message), close);
  close.addEventListener('click', () => element.remove());
  container().append(element);
  const duration = seconds ?? (kind === 'error' ? 12 : 4);
  if (duration > 0) setTimeout(() => element.remove(), duration * 1000);
  return element;
}

export function toastError(message: string): HTMLElement {
  return toast(message, 'error');
}
