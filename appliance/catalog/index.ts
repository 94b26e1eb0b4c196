export { Catalog, type CatalogEntry, type FindMatch } from './catalog.ts';
