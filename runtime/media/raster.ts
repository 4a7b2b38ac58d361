/** An image in memory: RGBA, 4 bytes a pixel, rows top to bottom (what the JPEG codec and the drawing code share). */
export interface Raster {
  width: number;
  height: number;
  data: Uint8Array;
}
