// Small inline SVG icons (16x16, stroked with currentColor): no icon font, no requests.

const PATHS = {
  file: 'M4 1.5h5l3.5 3.5v9.5h-8.5z M9 1.5v3.5h3.5',
  folder: 'M1.5 3.5h4.5l1.5 1.5h7v8.5h-13z',
  folderOpen: 'M1.5 3.5h4.5l1.5 1.5h6v2 M1.5 13.5v-10 M1.5 13.5l2.5-6.5h11l-2.5 6.5z',
  newFile: 'M4 1.5h5l3.5 3.5v3 M9 1.5v3.5h3.5 M4 1.5v13h4 M12 10v5 M9.5 12.5h5',
  newFolder: 'M1.5 3.5h4.5l1.5 1.5h7v3 M1.5 3.5v10h6.5 M12 9v5.5 M9.5 11.75h5',
  upload: 'M8 11V2.5 M4.5 6l3.5-3.5l3.5 3.5 M2 10.5v3.5h12v-3.5',
  download: 'M8 2v8.5 M4.5 7l3.5 3.5l3.5-3.5 M2 10.5v3.5h12v-3.5',
  refresh: 'M13.5 8a5.5 5.5 0 1 1-1.6-3.9 M13.5 1.5v3.5h-3.5',
  close: 'M4 4l8 8 M12 4l-8 8',
  run: 'M4.5 2.5v11l9-5.5z',
  history: 'M2.5 8a5.5 5.5 0 1 0 1.6-3.9 M2.5 1.5v3h3 M8 5v3.5l2.5 1.5',
  plus: 'M8 2.5v11 M2.5 8h11',
  trash: 'M2.5 4h11 M6 4V2.5h4V4 M4 4l.8 10h6.4L12 4',
  rename: 'M10.5 2.5l3 3l-8 8h-3v-3z',
  collapse: 'M3 5.5l5 5l5-5',
  expand: 'M5.5 3l5 5l-5 5',
  logout: 'M6 2.5H2.5v11H6 M10 5l3 3l-3 3 M13 8H6',
  terminal: 'M1.5 2.5h13v11h-13z M4 6l2.5 2l-2.5 2 M8 10.5h4',
  console: 'M1.5 4.5l3 3.5l-3 3.5 M6 4.5l3 3.5l-3 3.5 M10.5 12h4',
} as const;

export type IconName = keyof typeof PATHS;

const NS = 'http://www.w3.org/2000/svg';

export function icon(name: IconName, label?: string): SVGSVGElement {
  const svg = document.createElementNS(NS, 'svg');
  svg.setAttribute('viewBox', '0 0 16 16');
  svg.setAttribute('class', `icon icon-${name}`);
  svg.setAttribute('aria-hidden', label === undefined ? 'true' : 'false');
  if (label !== undefined) svg.setAttribute('aria-label', label);
  const path = document.createElementNS(NS, 'path');
  path.setAttribute('d', PATHS[name]);
  svg.append(path);
  return svg;
}
