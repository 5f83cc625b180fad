// The IDE's resizable split (tree | editor, console / terminals), remembered per workspace.
import { h } from '../common/dom';

export interface Layout {
  /** Width of the file tree, in pixels. */
  sidebar: number;
  /** Height of the terminal panel, in pixels. */
  panel: number;
  /** Width of the console beside the editor, in pixels, and whether it is shown. */
  console: number;
  consoleOpen: boolean;
  /** Open editor tabs, in order, and the active one. */
  open: string[];
  active: string | null;
  /** Expanded folders of the tree. */
  expanded: string[];
}

const DEFAULTS: Layout = {
  sidebar: 260, panel: 260, console: 440, consoleOpen: false, open: [], active: null, expanded: [],
};

export class LayoutStore {
  private readonly key: string;
  private timer: number | undefined;
  readonly value: Layout;

  constructor(workspace: string) {
    this.key = `ide:layout:${workspace}`;
    this.value = { ...DEFAULTS, ...this.read() };
  }

  private read(): Partial<Layout> {
    try {
      const raw = localStorage.getItem(this.key);
      if (raw === null) return {};
      const parsed = JSON.parse(raw) as Partial<Layout>;
      return typeof parsed === 'object' ? parsed : {};
    } catch {
      return {};
    }
  }

  update(changes: Partial<Layout>): void {
    Object.assign(this.value, changes);
    window.clearTimeout(this.timer);
    this.timer = window.setTimeout(() => this.flush(), 200);
  }

  flush(): void {
    window.clearTimeout(this.timer);
    try {
      localStorage.setItem(this.key, JSON.stringify(this.value));
    } catch {
      // Storage full or disabled: the layout is a convenience, not data.
    }
  }
}

export interface SplitterOptions {
  /** 'vertical': a bar between side-by-side panes; 'horizontal': between stacked panes. */
  orientation: 'vertical' | 'horizontal';
  /** The pane whose size the splitter sets. */
  pane: HTMLElement;
  /** Whether the pane is after the bar (its size grows when the bar moves back). */
  paneAfter: boolean;
  min: number;
  max: () => number;
  initial: number;
  label: string;
  onResize: (size: number) => void;
}

/** A draggable (and keyboard-movable) bar that sets the size of one pane. */
export function splitter(options: SplitterOptions): HTMLElement {
  const vertical = options.orientation === 'vertical';
  const bar = h('div', {
    class: `splitter splitter-${options.orientation}`, role: 'separator', tabindex: 0,
    'aria-orientation': vertical ? 'vertical' : 'horizontal', 'aria-label': options.label,
  });
  let size = options.initial;
  const apply = (value: number, save: boolean): void => {
    size = Math.round(Math.max(options.min, Math.min(options.max(), value)));
    options.pane.style[vertical ? 'width' : 'height'] = `${size}px`;
    bar.setAttribute('aria-valuenow', String(size));
    if (save) options.onResize(size);
  };
  apply(size, false);
  bar.addEventListener('pointerdown', (event) => {
    event.preventDefault();
    bar.setPointerCapture(event.pointerId);
    bar.classList.add('dragging');
    document.body.classList.add(vertical ? 'resizing-x' : 'resizing-y');
    const start = vertical ? event.clientX : event.clientY;
    const startSize = size;
    const move = (e: PointerEvent): void => {
      const delta = (vertical ? e.clientX : e.clientY) - start;
      apply(startSize + (options.paneAfter ? -delta : delta), false);
    };
    const up = (): void => {
      bar.releasePointerCapture(event.pointerId);
      bar.classList.remove('dragging');
      document.body.classList.remove('resizing-x', 'resizing-y');
      bar.removeEventListener('pointermove', move);
      bar.removeEventListener('pointerup', up);
      bar.removeEventListener('pointercancel', up);
      options.onResize(size);
    };
    bar.addEventListener('pointermove', move);
    bar.addEventListener('pointerup', up);
    bar.addEventListener('pointercancel', up);
  });
  bar.addEventListener('keydown', (event) => {
    const grow = vertical ? ['ArrowRight', 'ArrowLeft'] : ['ArrowDown', 'ArrowUp'];
    const index = grow.indexOf(event.key);
    if (index < 0) return;
    event.preventDefault();
    const step = (index === 0 ? 1 : -1) * (options.paneAfter ? -1 : 1) * 16;
    apply(size + step, true);
  });
  window.addEventListener('resize', () => apply(size, false));
  return bar;
}
