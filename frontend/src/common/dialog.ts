// Modal dialogs that return what was chosen (the browser's confirm() cannot be styled or tested).
import { h } from './dom';

export interface Choice<T> {
  label: string;
  value: T;
  kind?: 'primary' | 'danger' | 'plain';
}

/** Show a modal; resolves with the chosen value, or ``dismissed`` on Escape / backdrop. */
export function choose<T>(title: string, message: string, choices: Choice<T>[], dismissed: T): Promise<T> {
  return new Promise((resolve) => {
    const previous = document.activeElement as HTMLElement | null;
    const buttons = choices.map((choice) =>
      h('button', { type: 'button', class: `button ${choice.kind ?? 'plain'}` }, choice.label),
    );
    const panel = h('div', { class: 'dialog', role: 'dialog', 'aria-modal': 'true', 'aria-labelledby': 'dialog-title' },
      h('h2', { id: 'dialog-title' }, title),
      h('p', { class: 'dialog-message' }, message),
      h('div', { class: 'dialog-buttons' }, ...buttons));
    const backdrop = h('div', { class: 'backdrop' }, panel);
    const finish = (value: T): void => {
      backdrop.remove();
      document.removeEventListener('keydown', onKey, true);
      previous?.focus();
      resolve(value);
    };
    const onKey = (event: KeyboardEvent): void => {
      if (event.key === 'Escape') {
        event.preventDefault();
        event.stopPropagation();
        finish(dismissed);
      }
    };
    buttons.forEach((button, i) => {
      const choice = choices[i];
      if (choice) button.addEventListener('click', () => finish(choice.value));
    });
    backdrop.addEventListener('mousedown', (event) => {
      if (event.target === backdrop) finish(dismissed);
    });
    document.addEventListener('keydown', onKey, true);
    document.body.append(backdrop);
    // Focus the safest choice: the last non-danger button, else the first.
    const safe = buttons.findIndex((_, i) => choices[i]?.kind === 'primary');
    (buttons[safe >= 0 ? safe : 0] ?? panel).focus();
  });
}

/** Ask a yes/no question; ``danger`` colours the confirming button. */
export async function confirmDialog(title: string, message: string, confirmLabel: string, danger = false): Promise<boolean> {
  return choose(title, message, [
    { label: 'Cancel', value: false, kind: 'plain' },
    { label: confirmLabel, value: true, kind: danger ? 'danger' : 'primary' },
  ], false);
}
