import uPlot from 'uplot';
import 'uplot/dist/uPlot.min.css';
import { h } from './dom';
import type { Series } from './ring';

export interface Line {
  label: string;
  /** A CSS custom property naming the colour, e.g. "--c1". */
  color: string;
  dash?: boolean;
}

function cssVar(name: string): string {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || '#888';
}

/** Seconds since the epoch as the local wall-clock time, "14:05:09". */
function clock(seconds: number): string {
  const d = new Date(seconds * 1000);
  return [d.getHours(), d.getMinutes(), d.getSeconds()].map((n) => String(n).padStart(2, '0')).join(':');
}

/**
 * A live line chart over a {@link Series}: built once, then `refresh` redraws it
 * from the series' rings. It follows its container's width.
 */
export class Chart {
  readonly element: HTMLElement;
  private plot: uPlot | null = null;
  private readonly resize: ResizeObserver;

  constructor(
    readonly title: string,
    private readonly series: Series,
    private readonly lines: Line[],
    private readonly format: (v: number) => string,
    /** The seconds the time axis spans, ending at the newest sample. */
    private readonly windowSeconds = 300,
    private readonly height = 180,
  ) {
    const box = h('div', { class: 'chart-plot' });
    this.element = h('figure', { class: 'chart', 'data-chart': title }, h('figcaption', {}, title), box);
    this.resize = new ResizeObserver(() => this.fit(box));
    this.resize.observe(box);
  }

  private fit(box: HTMLElement): void {
    const width = Math.max(200, Math.floor(box.clientWidth));
    if (!this.plot) {
      this.plot = this.build(box, width);
    } else if (this.plot.width !== width) {
      this.plot.setSize({ width, height: this.height });
    }
  }

  private build(box: HTMLElement, width: number): uPlot {
    const axis = cssVar('--muted');
    const grid = cssVar('--grid');
    const format = this.format;
    const options: uPlot.Options = {
      width,
      height: this.height,
      // A key to the lines; live values would read "–" whenever the pointer is elsewhere.
      legend: { show: true, live: false },
      cursor: { drag: { x: false, y: false } },
      scales: {
        // The samples there are, up to the window, and at least a minute: a lone
        // first sample still gets a readable axis.
        x: { time: true, range: (_u, min, max) => [Math.min(Math.max(min, max - this.windowSeconds), max - 60), max] },
        y: { range: (_u, _min, max) => [0, max > 0 ? max * 1.1 : 1] },
      },
      axes: [
        {
          stroke: axis,
          grid: { stroke: grid, width: 1 },
          ticks: { stroke: grid },
          space: 70,
          values: (_u, vals) => vals.map((v) => clock(v)),
        },
        { stroke: axis, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid }, size: 70, values: (_u, vals) => vals.map(format) },
      ],
      series: [
        {},
        ...this.lines.map((l) => ({
          label: l.label,
          stroke: cssVar(l.color),
          width: 2,
          dash: l.dash ? [6, 4] : undefined,
          value: (_u: uPlot, v: number | null) => (v === null ? '–' : format(v)),
          spanGaps: false,
        })),
      ],
    };
    return new uPlot(options, this.series.data() as uPlot.AlignedData, box);
  }

  /** Redraws from the series. */
  refresh(): void {
    this.plot?.setData(this.series.data() as uPlot.AlignedData);
  }

  destroy(): void {
    this.resize.disconnect();
    this.plot?.destroy();
    this.plot = null;
  }
}
