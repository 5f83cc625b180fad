// Light and dark follow the system (prefers-color-scheme).

const query = window.matchMedia('(prefers-color-scheme: dark)');

export function isDark(): boolean {
  return query.matches;
}

export function onThemeChange(callback: (dark: boolean) => void): void {
  query.addEventListener('change', () => callback(query.matches));
}
