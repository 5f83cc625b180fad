// The search API of a workspace (/w/<uuid>/api/search): text in files, and files by name.
import { ServerConnection } from '@jupyterlab/services';
import { responseError, UNREACHABLE, ApiError } from '../common/api';

export interface SearchQuery {
  q: string;
  regex: boolean;
  case: boolean;
  word: boolean;
  include: string;
  exclude: string;
  /** Ask for each match's replacement too (regexp_replace's syntax in regex mode). */
  replace?: string;
}

export interface SearchMatch {
  /** 1-based line. */
  line: number;
  /** 1-based column, in UTF-16 code units (as Monaco counts). */
  column: number;
  /** In UTF-16 code units. */
  length: number;
  preview: { before: string; match: string; after: string };
  replacement?: string;
}

export interface FileMatches {
  path: string;
  matches: SearchMatch[];
}

export interface SearchResult {
  files: FileMatches[];
  truncated: boolean;
  searched_files: number;
}

export interface FileHit {
  path: string;
  /** Indices of the path's characters that matched the query. */
  positions: number[];
}

export interface FileNameResult {
  files: FileHit[];
  truncated: boolean;
}

export class SearchClient {
  constructor(private readonly settings: ServerConnection.ISettings) {}

  /** Find text in the workspace's files. */
  find(query: SearchQuery, signal?: AbortSignal): Promise<SearchResult> {
    const params = new URLSearchParams({
      q: query.q, regex: String(query.regex), case: String(query.case), word: String(query.word),
    });
    if (query.include.trim()) params.set('include', query.include);
    if (query.exclude.trim()) params.set('exclude', query.exclude);
    if (query.replace !== undefined) params.set('replace', query.replace);
    return this.get<SearchResult>(`api/search?${params.toString()}`, signal);
  }

  /** The workspace's files that match ``q`` fuzzily, best first. */
  fileNames(q: string, signal?: AbortSignal): Promise<FileNameResult> {
    return this.get<FileNameResult>(`api/search/files?${new URLSearchParams({ q }).toString()}`, signal);
  }

  private async get<T>(path: string, signal?: AbortSignal): Promise<T> {
    let response: Response;
    try {
      response = await ServerConnection.makeRequest(this.settings.baseUrl + path, { signal }, this.settings);
    } catch (error) {
      if (signal?.aborted) throw error;
      throw new ApiError(0, UNREACHABLE);
    }
    if (!response.ok) throw await responseError(response);
    return (await response.json()) as T;
  }
}
